"""Video input/output with PyAV: decode frames one at a time (bounded memory), write small test videos.

Frames are returned exactly as decoded (RGB, uint8, the file's own size): no resize, no crop. ImageNet-P
videos are 224x224 and go to the model as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from attnprobe.errors import UserError

__all__ = ["iter_frames", "read_frames", "count_frames", "write_video", "batched_frames"]


def _open(path: str | Path):  # noqa: ANN202 - av.container.InputContainer
    import av

    try:
        return av.open(str(path), mode="r")
    except FileNotFoundError:
        raise UserError(f"video not found: {path}; check the --data path") from None
    except av.error.FFmpegError as e:  # type: ignore[attr-defined]
        raise UserError(f"cannot read video {path} ({e}); the file is damaged, download it again or delete it"
                        ) from None


def iter_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Decode the frames of the first video stream one by one.

    Args:
        path: an .mp4 (or any container FFmpeg reads).

    Yields:
        (H, W, 3) uint8 RGB frames at the file's own resolution.
    """
    import av

    container = _open(path)
    try:
        stream = container.streams.video[0] if container.streams.video else None
        if stream is None:
            raise UserError(f"{path} has no video stream; it is not an ImageNet-P video, remove it from the folder")
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:  # type: ignore[attr-defined]
            raise UserError(f"cannot decode {path} ({e}); the file is damaged, download it again or delete it"
                            ) from None
    finally:
        container.close()


def read_frames(path: str | Path) -> np.ndarray:
    """All frames of a (short) video as one (T, H, W, 3) uint8 array. Prefer `iter_frames` for long videos."""
    frames = list(iter_frames(path))
    if not frames:
        raise UserError(f"{path} contains no frames; download it again or delete it")
    return np.stack(frames)


def count_frames(path: str | Path) -> int:
    """Number of decodable frames (decodes the file, because container frame counts are not reliable)."""
    return sum(1 for _ in iter_frames(path))


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: int = 1, codec: str = "libx264",
                crf: int = 20) -> Path:
    """Encode RGB uint8 frames to a video file (used to build test trees and to export regenerated sequences).

    Args:
        path: output file (parent folders are created).
        frames: (H, W, 3) uint8 RGB frames, all of the same even size.
        fps: frame rate (ImageNet-P uses 1 fps).
        codec: FFmpeg encoder name (`libx264` like ImageNet-P, or `mpeg4`).
        crf: x264 constant rate factor (ImageNet-P used 20 for non-noise perturbations); ignored by other codecs.

    Returns:
        The path written.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), mode="w")
    try:
        stream = None
        for arr in frames:
            arr = np.ascontiguousarray(arr, dtype=np.uint8)
            if stream is None:
                stream = container.add_stream(codec, rate=fps)
                stream.height, stream.width = int(arr.shape[0]), int(arr.shape[1])
                stream.pix_fmt = "yuv420p"
                if codec.startswith("libx264"):
                    stream.options = {"crf": str(crf), "preset": "medium"}
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        if stream is None:
            raise ValueError("write_video needs at least one frame")
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return path


def batched_frames(frames: Iterable[np.ndarray], batch_size: int,
                   transform: Callable[[np.ndarray], torch.Tensor]) -> Iterator[torch.Tensor]:
    """Group frames into (<= batch_size, C, H, W) tensors after `transform`, so memory stays bounded.

    Args:
        frames: (H, W, 3) uint8 frames, e.g. from `iter_frames` or a perturbation generator.
        batch_size: most frames per yielded tensor.
        transform: frame → (C, H, W) tensor (e.g. to-tensor + normalise).
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    buf: list[torch.Tensor] = []
    for f in frames:
        buf.append(transform(f))
        if len(buf) == batch_size:
            yield torch.stack(buf)
            buf = []
    if buf:
        yield torch.stack(buf)
