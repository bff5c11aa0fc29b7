"""Hugging Face Hub access that fails fast offline: cache first, then one quick reachability probe, then download.

`huggingface_hub` retries a failed connection for about half a minute before giving up. A researcher on an offline
compute node should instead get one line at once that says what to do, so every hub access here first looks in the
local cache (`HF_HOME`), and only when the file is not there checks with one short TCP connection that the hub (or the
configured proxy) can be reached at all.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from attnprobe.errors import UserError

#: Weights file names of a timm / Hugging Face model folder, in timm's order of preference.
WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
                 "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                 "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
PROBE_TIMEOUT_S = 3.0


def split_revision(repo: str) -> tuple[str, str | None]:
    """`org/name@rev` → (`org/name`, `rev`); timm's spelling of a pinned revision."""
    repo_id, _, revision = repo.partition("@")
    return repo_id, revision or None


def endpoint() -> str:
    """The hub URL in use (`HF_ENDPOINT` mirrors included)."""
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except ImportError:  # pragma: no cover - huggingface_hub comes with timm
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def is_offline_mode() -> bool:
    """True when the user switched the hub off (`HF_HUB_OFFLINE=1`)."""
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether one TCP connection to `url`'s host (or to the HTTPS proxy in use) opens within `timeout` seconds."""
    proxy = urllib.request.getproxies().get(urllib.parse.urlparse(url).scheme or "https")
    parsed = urllib.parse.urlparse(proxy or url)
    if not parsed.hostname:
        return True  # nothing we can probe; let the download itself report
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def cached_file(repo: str, names: Sequence[str]) -> Path | None:
    """The first of `names` present for `repo` in the local hub cache, without any network access."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    repo_id, revision = split_revision(repo)
    for name in names:
        found = try_to_load_from_cache(repo_id, name, revision=revision)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


@contextmanager
def offline() -> Iterator[None]:
    """Make `huggingface_hub` (and timm through it) use only the local cache inside the block.

    NOTE: `HF_HUB_OFFLINE` is read once at import time; `huggingface_hub` consults the module constant on every
    request, so setting it for the duration of the block is what the environment variable would have done.
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def require_online(what: str, fix: str) -> None:
    """Raise one `UserError` at once when the hub cannot be reached (offline mode, no network, no route)."""
    if is_offline_mode():
        raise UserError(f"{what} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {fix}")
    if not reachable(endpoint()):
        raise UserError(f"cannot reach {endpoint()} to download {what} (offline?); {fix}")


def fetch(repo: str, names: Sequence[str], fix: str) -> Path:
    """Local path of the first of `names` that `repo` has: from the cache, else downloaded (fails fast offline).

    Args:
        repo: `org/name` or `org/name@revision`.
        names: acceptable file names, in order of preference.
        fix: what the user can do instead, appended to every error.
    """
    if (found := cached_file(repo, names)) is not None:
        return found
    require_online(f"hf-hub:{repo} ({' or '.join(names[:2])})", fix)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, revision = split_revision(repo)
    for name in names:
        try:
            return Path(hf_hub_download(repo_id, name, revision=revision))
        except LocalEntryNotFoundError:  # NOTE: a subclass of EntryNotFoundError, but it means "no connection"
            raise UserError(f"lost the connection to {endpoint()} while fetching hf-hub:{repo}; {fix}") from None
        except EntryNotFoundError:
            continue
        except (RepositoryNotFoundError, RevisionNotFoundError):
            raise UserError(f"hf-hub:{repo} does not exist on {endpoint()} (or is private: log in with "
                            f"`hf auth login`); {fix}") from None
        except Exception as e:  # noqa: BLE001 - network and HTTP failures of every kind mean "could not fetch"
            raise UserError(f"cannot download {name} of hf-hub:{repo} ({type(e).__name__}); {fix}") from None
    raise UserError(f"hf-hub:{repo} has none of {', '.join(names)}; is it a timm model? {fix}")
