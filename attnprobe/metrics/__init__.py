"""Attention metrics: pure functions on tensors, no I/O.

All take post-softmax attention maps `attn` of shape (B, H, N_q, N_k) (rows are queries, columns keys, each row
sums to 1; N_q = N_k = N for self-attention) and return one value per image (B,) or per image and head (B, H). They
compute in float32 (float64 inputs stay float64), so half-precision maps from a GPU run are safe.

* `attention_cosine(a, b)` (B, H): stability of attention between two runs of the same image (clean vs corrupted).
* `head_similarity(attn)` (B,): mean cosine similarity between the maps of all head pairs (lower = more diverse).
* `overfocusing(attn, k, tau)`: dict of (B,) tensors, `row_similarity` (the ADL quantity of one layer),
  `topk_column_mass`, `row_entropy`, `column_gini`; each is also available as its own function.

Queries and keys that differ (N_q != N_k: spatial reduction in PVT-v2 / Twins / NextViT, pooling in MViTv2,
subsampling in LeViT, class attention with N_q = 1): every metric is defined and compares like with like, with the
key count N_k as the scale (uniform attention is 1/N_k, entropy is at most log N_k, top-k counts key columns).
Two cases are undefined and raise ValueError: `head_similarity` with one head, and `row_similarity` with one query
(a single row always equals the mean row); `overfocusing` leaves `row_similarity` out for N_q = 1. The diagnostics
drivers skip these and say so in their result's `notes`.

Windowed attention (Swin and the other window kinds of `attnprobe.capture`): a layer's maps are (B * nW, H, n_q,
n_k), one per window. Compute any metric on them as if each window were an image, then average over the windows of
each image with `window_mean(values, num_windows)`. What that means per metric: `attention_cosine` and
`head_similarity` compare the same window in the two runs / two heads and average the window cosines (not the cosine
of the whole block-diagonal map); in `overfocusing`, N is the window size n (the threshold is tau/n, top-k counts
columns of one window, entropy is at most log n), so values of windowed and global layers are not on the same scale.
The drivers in `attnprobe.diagnostics` do exactly this.
"""

from attnprobe.metrics.diversity import head_similarity
from attnprobe.metrics.overfocusing import (
    OVERFOCUS_METRICS,
    column_gini,
    overfocusing,
    row_entropy,
    row_similarity,
    topk_column_mass,
)
from attnprobe.metrics.stability import attention_cosine
from attnprobe.metrics.windows import window_mean

__all__ = [
    "OVERFOCUS_METRICS", "attention_cosine", "column_gini", "head_similarity", "overfocusing", "row_entropy",
    "row_similarity", "topk_column_mass", "window_mean",
]
