"""ImageNet-C formulas: corruption error (CE), mCE, relative mCE, the Table 3 layout, and FAN's retention.

Fractions in, fractions out. `errors` is always a mapping from corruption name (the ImageNet-C folder name) to its
five per-severity top-1 errors, either as a sequence ordered by severity 1..5 or as a `{severity: error}` mapping:

    errors = {"gaussian_noise": [0.31, 0.38, 0.47, 0.59, 0.71], "shot_noise": [...], ...}
    mce(errors)                      # 0.462 -> shown as "mCE 46.2" in the paper's tables
    relative_mce(errors, clean_error=0.166)

Definitions (Hendrycks & Dietterich, 2019): for a model f and corruption c,
``CE_c = sum_s E^f_{s,c} / sum_s E^AlexNet_{s,c}``, ``mCE = mean_c CE_c`` over the 15 benchmark corruptions, and
``relative CE_c = sum_s (E^f_{s,c} - E^f_clean) / sum_s (E^AlexNet_{s,c} - E^AlexNet_clean)``. The AlexNet errors
(`attnprobe.protocol.alexnet_errors()`) are already averaged over severities, so the sums become means.

Not to be confused with the mCE (they are labelled differently everywhere in attnprobe):

* `mean_corrupted_accuracy`: the plain mean top-1 accuracy over corruptions and severities ("IN-C" in FAN's tables),
  higher is better and not normalised by AlexNet;
* `retention`: FAN's retention rate, corrupted accuracy / clean accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Union

from attnprobe.errors import UserError
from attnprobe.protocol import alexnet_errors, benchmark_corruptions, extra_corruptions

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "ALEXNET_CLEAN_ERROR",
    "CORRUPTION_GROUPS",
    "DISPLAY_NAMES",
    "IncompleteTableError",
    "SEVERITIES",
    "ce_table",
    "corruption_errors",
    "is_complete",
    "mce",
    "mean_corrupted_accuracy",
    "mean_corruption_error",
    "missing_corruptions",
    "relative_corruption_errors",
    "relative_mce",
    "retention",
    "validate_errors",
]

Errors = Mapping[str, Union[Sequence[float], Mapping[int, float]]]

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

#: AlexNet's clean top-1 error on the ImageNet validation set, the baseline of the relative mCE
#: (43.48%; Hendrycks & Dietterich 2019 report 43.5%, torchvision's AlexNet scores 56.52% top-1).
ALEXNET_CLEAN_ERROR = 0.4348

#: The groups of the paper's Table 3 (and of the ImageNet-C release tarballs), in column order.
CORRUPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "Noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "Blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "Weather": ("snow", "frost", "fog", "brightness"),
    "Digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}

#: Column headers of the paper's Table 3.
DISPLAY_NAMES: dict[str, str] = {
    "gaussian_noise": "Gaussian", "shot_noise": "Shot", "impulse_noise": "Impulse", "defocus_blur": "Defocus",
    "glass_blur": "Glass", "motion_blur": "Motion", "zoom_blur": "Zoom", "snow": "Snow", "frost": "Frost",
    "fog": "Fog", "brightness": "Brightness", "contrast": "Contrast", "elastic_transform": "Elastic",
    "pixelate": "Pixelate", "jpeg_compression": "JPEG",
}


class IncompleteTableError(UserError, ValueError):
    """The errors do not cover what a metric needs (e.g. the mCE needs all 15 corruptions x 5 severities)."""


def _per_severity(name: str, values: Sequence[float] | Mapping[int, float]) -> list[float]:
    """The five per-severity errors of one corruption as a list ordered by severity, validated."""
    if isinstance(values, Mapping):
        missing = [s for s in SEVERITIES if s not in values and str(s) not in values]
        if missing:
            raise IncompleteTableError(
                f"corruption '{name}' lacks severities {missing}; evaluate all of severities 1-5 for a CE")
        out = [float(values[s] if s in values else values[str(s)]) for s in SEVERITIES]  # type: ignore[index]
    else:
        out = [float(v) for v in values]
        if len(out) != len(SEVERITIES):
            raise IncompleteTableError(
                f"corruption '{name}' has {len(out)} severity errors, expected 5 (severities 1-5 in order)")
    for v in out:
        if not (0.0 <= v <= 1.0) or math.isnan(v):
            hint = " (errors are fractions: 46.2% is 0.462)" if 1.0 < v <= 100.0 else ""
            raise ValueError(f"corruption '{name}' has error {v}, outside [0, 1]{hint}")
    return out


def validate_errors(errors: Errors) -> dict[str, list[float]]:
    """Check names and values; return `{corruption: [e1..e5]}` for the corruptions present.

    Raises:
        UserError: an unknown corruption name (the message lists the valid ones).
        IncompleteTableError: a corruption without exactly its five severities.
        ValueError: an error outside [0, 1] (for example a percentage).
    """
    known = benchmark_corruptions() + extra_corruptions()
    out: dict[str, list[float]] = {}
    for name, values in errors.items():
        if name not in known:
            raise UserError(f"unknown corruption '{name}'; choose from: {', '.join(known)}")
        out[name] = _per_severity(name, values)
    return out


def missing_corruptions(errors: Errors) -> list[str]:
    """Benchmark corruptions (of the 15 that enter the mCE) that `errors` lacks, in canonical order."""
    return [c for c in benchmark_corruptions() if c not in errors]


def is_complete(errors: Errors) -> bool:
    """Whether `errors` holds every benchmark corruption with all five severities (an mCE can be computed)."""
    if missing_corruptions(errors):
        return False
    try:
        validate_errors(errors)
    except IncompleteTableError:
        return False
    return True


def _require_complete(errors: Errors, metric: str) -> dict[str, list[float]]:
    table = validate_errors(errors)
    missing = missing_corruptions(table)
    if missing:
        raise IncompleteTableError(
            f"the {metric} needs all 15 benchmark corruptions, {len(missing)} are missing "
            f"({', '.join(missing)}); evaluate them or report the per-corruption CE as a partial table")
    return table


def mean_corruption_error(values: Sequence[float] | Mapping[int, float], name: str = "corruption") -> float:
    """Unnormalised mean error over the five severities of one corruption."""
    vals = _per_severity(name, values)
    return sum(vals) / len(vals)


def corruption_errors(errors: Errors, alexnet: Mapping[str, float] | None = None) -> dict[str, float]:
    """CE per benchmark corruption present in `errors` (partial tables allowed; extra corruptions are skipped,
    because AlexNet has no baseline for them).

    Args:
        errors: per-corruption, per-severity top-1 errors.
        alexnet: AlexNet's severity-averaged error per corruption; defaults to the protocol constants.
    """
    base = dict(alexnet) if alexnet is not None else alexnet_errors()
    table = validate_errors(errors)
    return {c: sum(table[c]) / len(SEVERITIES) / base[c] for c in benchmark_corruptions() if c in table}


def mce(errors: Errors, alexnet: Mapping[str, float] | None = None) -> float:
    """Mean corruption error over the 15 benchmark corruptions (1.0 for AlexNet; the paper shows it x100).

    Raises:
        IncompleteTableError: fewer than the 15 benchmark corruptions or a corruption without its 5 severities.
    """
    _require_complete(errors, "mCE")
    ce = corruption_errors(errors, alexnet)
    return sum(ce.values()) / len(ce)


def relative_corruption_errors(errors: Errors, clean_error: float, alexnet: Mapping[str, float] | None = None,
                               alexnet_clean_error: float = ALEXNET_CLEAN_ERROR) -> dict[str, float]:
    """Relative CE per benchmark corruption present: degradation over the model's own clean error, normalised by
    AlexNet's degradation."""
    if not 0.0 <= clean_error <= 1.0:
        raise ValueError(f"clean error {clean_error} is outside [0, 1]; errors are fractions")
    base = dict(alexnet) if alexnet is not None else alexnet_errors()
    table = validate_errors(errors)
    return {c: (sum(table[c]) / len(SEVERITIES) - clean_error) / (base[c] - alexnet_clean_error)
            for c in benchmark_corruptions() if c in table}


def relative_mce(errors: Errors, clean_error: float, alexnet: Mapping[str, float] | None = None,
                 alexnet_clean_error: float = ALEXNET_CLEAN_ERROR) -> float:
    """Relative mCE over the 15 benchmark corruptions (1.0 for AlexNet).

    Args:
        errors: per-corruption, per-severity top-1 errors of the model.
        clean_error: the model's top-1 error on the clean validation set.
        alexnet: AlexNet's severity-averaged errors; defaults to the protocol constants.
        alexnet_clean_error: AlexNet's clean error.
    """
    _require_complete(errors, "relative mCE")
    rce = relative_corruption_errors(errors, clean_error, alexnet, alexnet_clean_error)
    return sum(rce.values()) / len(rce)


def mean_corrupted_accuracy(errors: Errors, allow_partial: bool = False) -> float:
    """Mean top-1 *accuracy* over the benchmark corruptions and their severities (FAN's "IN-C" column).

    This is not the mCE: it is an accuracy (higher is better) and is not normalised by AlexNet.

    Args:
        errors: per-corruption, per-severity top-1 errors.
        allow_partial: average over the benchmark corruptions present instead of requiring all 15.
    """
    table = validate_errors(errors) if allow_partial else _require_complete(errors, "mean corrupted accuracy")
    vals = [1.0 - e for c in benchmark_corruptions() if c in table for e in table[c]]
    if not vals:
        raise IncompleteTableError("no benchmark corruption in the errors; nothing to average")
    return sum(vals) / len(vals)


def retention(corrupted_accuracy: float, clean_accuracy: float) -> float:
    """FAN's retention rate: corrupted accuracy / clean accuracy (both accuracies, not errors)."""
    if clean_accuracy <= 0.0:
        raise ValueError("clean accuracy must be positive for a retention rate")
    return corrupted_accuracy / clean_accuracy


def ce_table(rows: Mapping[str, Errors], clean_errors: Mapping[str, float] | None = None,
             percent: bool = False, alexnet: Mapping[str, float] | None = None) -> pd.DataFrame:
    """The paper's Table 3 layout: one row per model, `mCE` then the CE of each corruption grouped as
    Noise / Blur / Weather / Digital.

    A row with a partial table keeps the CE of the corruptions it has, `NaN` elsewhere, and `NaN` as mCE (never an
    average of what happens to be there); their names are listed in `df.attrs["partial_rows"]`.

    Args:
        rows: model (row label) -> errors.
        clean_errors: optional model -> clean top-1 error; adds `Error` and `Rel. mCE` columns.
        percent: multiply by 100 like the paper (the default keeps fractions).
        alexnet: AlexNet's severity-averaged errors; defaults to the protocol constants.

    Returns:
        A DataFrame with two-level columns `(group, name)`: `("", "mCE")`, then e.g. `("Noise", "Gaussian")`.
    """
    import pandas as pd

    scale = 100.0 if percent else 1.0
    columns: list[tuple[str, str]] = []
    if clean_errors is not None:
        columns += [("", "Error"), ("", "Rel. mCE")]
    columns.append(("", "mCE"))
    columns += [(group, DISPLAY_NAMES[c]) for group, names in CORRUPTION_GROUPS.items() for c in names]
    data: list[list[float]] = []
    partial: list[str] = []
    for label, errors in rows.items():
        ce = corruption_errors(errors, alexnet)
        complete = is_complete(errors)
        if not complete:
            partial.append(label)
        row: list[float] = []
        if clean_errors is not None:
            clean = clean_errors.get(label)
            row.append(clean * scale if clean is not None else math.nan)
            row.append(relative_mce(errors, clean, alexnet) * scale if complete and clean is not None else math.nan)
        row.append(sum(ce.values()) / len(ce) * scale if complete else math.nan)
        row += [ce[c] * scale if c in ce else math.nan for names in CORRUPTION_GROUPS.values() for c in names]
        data.append(row)
    df = pd.DataFrame(data, index=list(rows), columns=pd.MultiIndex.from_tuples(columns))
    df.attrs["partial_rows"] = partial
    df.attrs["unit"] = "percent" if percent else "fraction"
    return df

