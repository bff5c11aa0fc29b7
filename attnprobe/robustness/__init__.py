"""Robustness formulas (pure functions; fractions in, fractions out).

ImageNet-C: `mce`, `relative_mce`, `ce_table`, ... (imagenet_c.py). ImageNet-P: `flip_probability`,
`top5_distance`, `mfr`, ... (imagenet_p.py).
"""

from attnprobe.robustness.imagenet_c import *  # noqa: F401,F403
from attnprobe.robustness.imagenet_p import *  # noqa: F401,F403
