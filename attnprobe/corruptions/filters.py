"""Linear filters on (..., H, W) tensors with SciPy/OpenCV border conventions: 1-D correlation, Gaussian, 2-D FFT.

Border modes use SciPy's names (OpenCV's in brackets):

* ``"nearest"``: a a a | a b c d | d d d (BORDER_REPLICATE; `skimage.filters.gaussian`'s default)
* ``"reflect"``: c b a | a b c d | d c b (BORDER_REFLECT; half-sample symmetric)
* ``"mirror"``: d c b | a b c d | c b a (BORDER_REFLECT_101; OpenCV's default)

Pads of any length are supported (the reflections repeat), as SciPy does for kernels wider than the image.

Separable filters run as matrix products: a dense (n, n) matrix with the border folded in for short axes, else a
block-Toeplitz product over overlapping windows (a few times the taps of a direct convolution, but BLAS-fast on
CPU and GPU, where a depthwise convolution with a 1-channel kernel is not).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from attnprobe.corruptions.borders import boundary_indices
from attnprobe.corruptions.loops_blur import separable_cpu

__all__ = ["boundary_indices", "correlate1d", "correlate2d", "fft_correlate2d", "gaussian_filter", "gaussian_kernel1d",
           "next_fast_len", "pad2d"]

_DENSE_MAX = 320  # axes up to this length use a dense (n, n) matrix
_BLOCK = 64  # output rows per block of the block-Toeplitz product


@lru_cache(maxsize=64)
def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> tuple[float, ...]:
    """SciPy's normalised Gaussian taps: radius int(truncate * sigma + 0.5), weights exp(-x^2 / (2 sigma^2))."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 / (float(sigma) ** 2) * x * x)
    return tuple((w / w.sum()).tolist())


@lru_cache(maxsize=64)
def _dense_operator(n: int, weights: tuple[float, ...], mode: str) -> np.ndarray:
    """(n, n) matrix of a 1-D correlation with centred taps `weights`, the border folded in."""
    k = len(weights)
    r = k // 2
    src = boundary_indices(n, r, r, mode)  # (n + k - 1,)
    a = np.zeros((n, n), dtype=np.float64)
    rows = np.repeat(np.arange(n), k)
    cols = src[np.arange(n)[:, None] + np.arange(k)[None, :]].ravel()
    np.add.at(a, (rows, cols), np.tile(np.asarray(weights), n))
    return a


@lru_cache(maxsize=64)
def _toeplitz_block(weights: tuple[float, ...], block: int) -> np.ndarray:
    """(block, block + k - 1) matrix: row i holds the taps at columns i .. i + k - 1."""
    k = len(weights)
    t = np.zeros((block, block + k - 1), dtype=np.float64)
    for i in range(block):
        t[i, i:i + k] = weights
    return t


def _as_tensor(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(a).to(device=like.device, dtype=like.dtype)


def correlate1d(x: torch.Tensor, weights: tuple[float, ...], dim: int, mode: str) -> torch.Tensor:
    """Correlate a float tensor with centred odd-length taps along `dim` (-1 or -2), SciPy border `mode`."""
    if dim not in (-1, -2):
        raise ValueError("correlate1d works along the last two dimensions only")
    n = x.shape[dim]
    k = len(weights)
    if k == 1:
        return x * weights[0]
    if n <= _DENSE_MAX or k > n:
        a = _as_tensor(_dense_operator(n, tuple(weights), mode), x)  # (n, n)
        return x @ a.T if dim == -1 else torch.matmul(a, x)
    r = k // 2
    nb = -(-n // _BLOCK)
    length = nb * _BLOCK + k - 1
    idx = torch.from_numpy(boundary_indices(n, r, length - n - r, mode)).to(x.device)
    t = _as_tensor(_toeplitz_block(tuple(weights), _BLOCK), x)  # (b, b + k - 1)
    xp = x.index_select(dim, idx)
    if dim == -1:
        win = xp.unfold(-1, _BLOCK + k - 1, _BLOCK)  # (..., nb, b + k - 1)
        y = win @ t.T  # (..., nb, b)
        return y.flatten(-2)[..., :n]
    win = xp.unfold(-2, _BLOCK + k - 1, _BLOCK)  # (..., nb, W, b + k - 1)
    y = torch.matmul(t, win.transpose(-1, -2))  # (..., nb, b, W)
    return y.flatten(-3, -2)[..., :n, :]


_CONV_MAX_TAPS = 65  # kernels up to this many taps run as depthwise convolutions


def _depthwise(x: torch.Tensor, weights_h: tuple[float, ...] | None, weights_w: tuple[float, ...] | None,
               mode: str) -> torch.Tensor:
    """Separable correlation as two depthwise convolutions (every image and channel its own group)."""
    h, w = x.shape[-2:]
    rh = len(weights_h) // 2 if weights_h else 0
    rw = len(weights_w) // 2 if weights_w else 0
    planes = x.reshape(1, -1, h, w)  # (1, N, H, W)
    n = planes.shape[1]
    out = pad2d(planes, rh, rh, rw, rw, mode)
    for weights, shape in ((weights_h, (n, 1, -1, 1)), (weights_w, (n, 1, 1, -1))):
        if weights:
            kernel = torch.tensor(weights, dtype=x.dtype, device=x.device).view(1, 1, *shape[2:])
            out = torch.nn.functional.conv2d(out, kernel.expand(shape[0], 1, *kernel.shape[2:]), groups=n)
    return out.reshape(x.shape)


def _shifted_sums(x: torch.Tensor, weights_h: tuple[float, ...] | None, weights_w: tuple[float, ...] | None,
                  mode: str) -> torch.Tensor:
    """Separable correlation as weighted sums of shifted views (one fused multiply-add per tap)."""
    h, w = x.shape[-2:]
    rh = len(weights_h) // 2 if weights_h else 0
    rw = len(weights_w) // 2 if weights_w else 0
    out = pad2d(x, rh, rh, rw, rw, mode)
    if weights_h:
        acc = out[..., 0:h, :] * weights_h[0]
        for i in range(1, len(weights_h)):
            acc.add_(out[..., i:i + h, :], alpha=weights_h[i])
        out = acc
    if weights_w:
        acc = out[..., 0:w] * weights_w[0]
        for i in range(1, len(weights_w)):
            acc.add_(out[..., i:i + w], alpha=weights_w[i])
        out = acc
    return out


def gaussian_filter(x: torch.Tensor, sigma: float | tuple[float, float], mode: str = "nearest",
                    truncate: float = 4.0) -> torch.Tensor:
    """`scipy.ndimage.gaussian_filter` over the last two dimensions (sigma per axis, 0 skips the axis)."""
    sh, sw = (sigma, sigma) if not isinstance(sigma, tuple) else sigma
    kh = gaussian_kernel1d(float(sh), float(truncate)) if sh > 0 else None
    kw = gaussian_kernel1d(float(sw), float(truncate)) if sw > 0 else None
    h, w = x.shape[-2:]
    small = all(k is None or len(k) <= min(_CONV_MAX_TAPS, n) for k, n in ((kh, h), (kw, w)))
    if small and x.is_floating_point() and x.device.type == "cpu":
        rh, rw = len(kh or (1,)) // 2, len(kw or (1,)) // 2
        out = separable_cpu(x.detach().contiguous().numpy(), kh or (1.0,), boundary_indices(h, rh, rh, mode),
                            kw or (1.0,), boundary_indices(w, rw, rw, mode))
        if out is not None:
            return torch.from_numpy(out)
    if small and x.is_floating_point():
        # NOTE: on the CPU, a few images at a time (see the engine's chunks) stay in cache and shifted sums of
        # short kernels win; depthwise convolutions need many planes to be fast (and are on GPUs)
        if x.device.type == "cpu" and max(len(kh or ()), len(kw or ())) <= 25:
            return _shifted_sums(x, kh, kw, mode)
        return _depthwise(x, kh, kw, mode)
    if kh is not None:
        x = correlate1d(x, kh, -2, mode)
    if kw is not None:
        x = correlate1d(x, kw, -1, mode)
    return x


_TORCH_PAD = {"nearest": "replicate", "mirror": "reflect", "wrap": "circular"}


def pad2d(x: torch.Tensor, top: int, bottom: int, left: int, right: int, mode: str) -> torch.Tensor:
    """Pad the last two dimensions with a SciPy border mode (any pad length)."""
    h, w = x.shape[-2:]
    fits = max(top, bottom) < h and max(left, right) < w
    if mode in _TORCH_PAD and (fits or mode == "nearest") and x.is_floating_point() and x.dim() >= 3:
        # NOTE: torch's pad kernels are much faster than a gather; they cover these modes when the pad is short.
        flat = x.reshape(-1, 1, h, w) if x.dim() != 4 else x
        out = torch.nn.functional.pad(flat, (left, right, top, bottom), mode=_TORCH_PAD[mode])
        return out.reshape(*x.shape[:-2], h + top + bottom, w + left + right)
    if mode == "reflect" and fits and x.is_floating_point():
        # NOTE: half-sample reflection = flipped edge slices; copies beat a gather along the last dimension
        x = torch.cat([x[..., :top, :].flip(-2), x, x[..., h - bottom:, :].flip(-2)], dim=-2)
        return torch.cat([x[..., :left].flip(-1), x, x[..., w - right:].flip(-1)], dim=-1)
    if mode == "nearest" and max(top, bottom, left, right) <= 2:
        # NOTE: short replicate pads of integer images (Canny): concatenating edge slices beats a gather
        x = torch.cat([x[..., :1, :]] * top + [x] + [x[..., -1:, :]] * bottom, dim=-2)
        return torch.cat([x[..., :1]] * left + [x] + [x[..., -1:]] * right, dim=-1)
    rows = torch.from_numpy(boundary_indices(h, top, bottom, mode)).to(x.device)
    cols = torch.from_numpy(boundary_indices(w, left, right, mode)).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def correlate2d(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """2-D correlation of (B, C, H, W) with one centred odd-sized kernel, border `mode`.

    Taps that are zero on the kernel's rim are dropped; small kernels run as a depthwise convolution, large ones
    by FFT (`fft_correlate2d`).
    """
    k = kernel
    while k.shape[0] > 1 and bool((k[0] == 0).all()) and bool((k[-1] == 0).all()):
        k = k[1:-1]
    while k.shape[1] > 1 and bool((k[:, 0] == 0).all()) and bool((k[:, -1] == 0).all()):
        k = k[:, 1:-1]
    kh, kw = k.shape
    h, w = x.shape[-2:]
    if kh * kw > 150 or kh > h or kw > w:
        return fft_correlate2d(x, k, mode)
    planes = pad2d(x.reshape(1, -1, h, w), kh // 2, kh // 2, kw // 2, kw // 2, mode)  # (1, N, H', W')
    n = planes.shape[1]
    weight = k.to(device=x.device, dtype=x.dtype).view(1, 1, kh, kw).expand(n, 1, kh, kw)
    return torch.nn.functional.conv2d(planes, weight, groups=n).reshape(x.shape)


def next_fast_len(n: int) -> int:
    """The smallest m >= n whose only prime factors are 2, 3 and 5 (fast for every FFT library)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def fft_correlate2d(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """2-D correlation of (B, C, H, W) with a centred odd-sized kernel, by FFT, border `mode`.

    Args:
        x: (B, C, H, W) float.
        kernel: (kh, kw) for every image, or (B, kh, kw) one per image (shared by the channels).
        mode: SciPy border mode.

    Returns:
        (B, C, H, W): out[y, x] = sum_{u, v} kernel[u, v] * x_padded[y + u, x + v].
    """
    b, c, h, w = x.shape
    kh, kw = kernel.shape[-2:]
    rh, rw = kh // 2, kw // 2
    xp = pad2d(x, rh, rh, rw, rw, mode)  # (B, C, H + kh - 1, W + kw - 1)
    fh, fw = next_fast_len(h + kh - 1), next_fast_len(w + kw - 1)
    xf = torch.fft.rfft2(xp, s=(fh, fw))  # (B, C, fh, fw // 2 + 1)
    if kernel.dim() == 3:
        kf = torch.fft.rfft2(kernel.to(x.dtype), s=(fh, fw)).conj().resolve_conj()[:, None]  # (B, 1, fh, fw//2+1)
    elif kernel.device.type == "cpu" and x.device.type == "cpu":
        kf = _kernel_spectrum(kernel.numpy().tobytes(), tuple(kernel.shape), kernel.dtype, x.dtype, fh, fw)
    else:
        kf = torch.fft.rfft2(kernel.to(device=x.device, dtype=x.dtype), s=(fh, fw)).conj().resolve_conj()
    out = torch.fft.irfft2(xf.mul_(kf), s=(fh, fw))
    return out[..., :h, :w]


@lru_cache(maxsize=8)
def _kernel_spectrum(data: bytes, shape: tuple[int, ...], kernel_dtype: torch.dtype, dtype: torch.dtype, fh: int,
                     fw: int) -> torch.Tensor:
    """The conjugated spectrum of a CPU kernel (the same for every batch of a size: computed once)."""
    kernel = torch.frombuffer(bytearray(data), dtype=kernel_dtype).reshape(shape)
    return torch.fft.rfft2(kernel.to(dtype), s=(fh, fw)).conj().resolve_conj()
