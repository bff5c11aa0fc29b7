"""Strict JSON: what attnprobe prints (`--json`) and writes (`log.jsonl`, `summary.json`) parses with any JSON reader.

Python's `json` writes `NaN` and `Infinity`, which are not JSON (jq, JavaScript and most other readers refuse them).
Here every non-finite number becomes `null`, NumPy and torch values become plain numbers and lists, and paths become
strings.

    dumps({"val_adl": float("nan"), "n": np.int64(3)})  # '{"val_adl": null, "n": 3}'
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["dumps", "plain"]


def _fallback(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # NumPy arrays and scalars, torch tensors
        return obj.tolist()
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def plain(obj: Any, default: Callable[[Any], Any] = _fallback) -> Any:
    """`obj` as plain JSON values: dicts with string keys, lists, str, int, finite float, bool, None.

    Args:
        default: turns any other object into something `plain` can convert (raises TypeError if it cannot).
    """
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): plain(v, default) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [plain(v, default) for v in obj]
    return plain(default(obj), default)


def dumps(obj: Any, default: Callable[[Any], Any] = _fallback, **kwargs: Any) -> str:
    """`json.dumps` that never writes NaN or Infinity (they become null); see `plain`."""
    return json.dumps(plain(obj, default), allow_nan=False, **kwargs)
