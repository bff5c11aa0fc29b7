"""Attention diagnostics drivers: stability, overfocusing, head similarity, and saved maps for figures.

Each driver runs one or more models on the *same* images and the *same* corruption draws (seeded per image with
`attnprobe.data.corruptions.image_seed`), captures token attention with `AttentionCapture`, reduces every layer's
maps to per-image values as soon as the layer has run (nothing N x N outlives its layer, except the few maps kept for
figures), and writes the values to the results store. A rerun skips images already stored; `fresh=True` recomputes.

    from attnprobe.diagnostics import ModelEntry, stability
    from attnprobe.data.selection import select_images
    entries = [ModelEntry.from_loaded(zoo.load_model("fan_b", ckpt_a)), ModelEntry.from_loaded(...)]
    res = stability(entries, select_images(data="val/", n=64), "gaussian_noise", [3], store=ResultsStore("out"))
    res.to_json()   # {"results": [{"model": ..., "layers": [{"layer": 0, "mean_cosine": ...}, ...]}, ...]}

Modules: `inputs` (models, conditions, model inputs), `reducer` (per-layer reduction), `runner` (the run: batches,
resume, writing), `maps` (map files), `results` (statistics, result object), `drivers` (the four commands).

Images are prepared as the model's evaluation transform does (resize, centre crop), corrupted *after* the crop (the
ImageNet-C recipe), then normalised. Models with the same input size therefore see pixel-identical corrupted images;
models with different input sizes get the same seeds (but necessarily different pixels). For a corrupted condition
the clean and corrupted images of a batch go through the model in one forward pass ([clean; corrupted]) and each
layer's map is split in two halves. A segmentation model (`model.task == "segmentation"`) sees one window of its
slide inference (its card's crop, 1024 x 1024 for the official models: 4096 tokens), one image per forward pass.

Stored values (`ResultsStore.add_diagnostics`, one row per image, layer and head; `head = -1` when not per head):

Corrupted images come from the batched torch engine (recipe imagenet-c) unless `corruption_source=
CorruptionSource(backend, recipe)` says otherwise; a corrupted series is stored under the dataset id tagged with
what corrupted it (`<dataset>;corruption=torch-v2/imagenet-c`), so two backends or recipes are never one series.

* `attention_cosine` (per head; condition = corruption, severity 1-5): cosine of clean vs corrupted maps.
* `head_similarity` (head -1; condition `clean` or a corruption): mean cosine over head pairs.
* `row_similarity`, `topk_column_mass`, `row_entropy`, `column_gini` (head -1): overfocusing measures.

Which maps: every token-attention map of `AttentionCapture` (kinds `token`, `window`, `reduced`), numbered 0, 1, ...
in the order the model computes them; each result layer says its `kind`, `heads`, `queries`, `keys` and `windows`.
Class, cross and pooling attention (queries that are not image tokens) are saved in the map files but not measured;
a model with no token attention at all (ConvNeXt, ResNet, XCiT's channel attention, CoaT's factorised attention) is
refused with a one-line `UserError` before anything runs. Windowed attention (Swin, MaxViT, Twins LSA, ...): every
metric is computed per window and averaged over the windows of an image. Queries != keys (`reduced`: PVT-v2, MViTv2,
LeViT, ...): every metric is over the N_k keys (see `attnprobe.metrics`); the clean and corrupted maps of a layer
always have the same shape, so their cosine compares the same queries and keys. A measure that is undefined for a
layer (head similarity with one head: SHViT, iFormer; row similarity with one query) is left out for that layer,
and the result's `notes` say so; means over layers are over the layers where it is defined.

Artifact format (`kind="attention_maps"`, one file per model, image and condition; registered with
`ResultsStore.add_artifact`, path relative to the store root):

    <out>/maps/<model>/<checkpoint sha256[:12]>/<condition>[-s<severity>]/<image slug>.npz

    image       uint8 (S, S, 3)   the model input before normalisation (clean, or corrupted with the stored seed)
    attn        float16 (L, H, N, N)   token attention of every layer, in order, when all layers are global, square
                and of one shape; otherwise attn_000, attn_001, ... one per layer, float16 (H, N_q, N_k), or
                (nW, H, n_q, n_k) for windowed layers. Square grids of more than 256 tokens (a segmentation
                window: 64 x 64) are stored pooled by f x f token blocks (`meta.token_pool` = f; queries averaged,
                keys summed), e.g. 4096 -> 256 tokens
    cls_attn    float16 (Lc, H, N_q, N_k)   class / cross / pooling attention (FAN, CaiT, CrossViT, ...), when the
                model has them; cls_attn_000, ... when their shapes differ
    layer_names str (L,)   module names of the token-attention layers
    meta        str   JSON: format_version, model, checkpoint_sha256, dataset, image, condition, severity, seed,
                      preprocessing, windows and kinds (per layer), num_prefix_tokens (class/distillation tokens in
                      front of the patch tokens, 0 for FAN/RVT), grid ([h, w] of the patch tokens when square)

`attnprobe report` draws the paper's attention figures (Fig. 1, 3, 4, supplementary Fig. I) from these files.
"""

from attnprobe.diagnostics.drivers import (DEFAULT_BATCH_SIZE, DEFAULT_KEEP_MAPS, attention_maps, heads, overfocus,
                                          stability)
from attnprobe.diagnostics.inputs import CLEAN, Condition, CorruptionSource, ModelEntry, corrupted_conditions
from attnprobe.diagnostics.maps import ARTIFACT_KIND, load_maps
from attnprobe.diagnostics.reducer import HEADS_METRIC, STABILITY_METRIC
from attnprobe.diagnostics.results import DiagnosticsResult

__all__ = [
    "ARTIFACT_KIND", "CLEAN", "Condition", "CorruptionSource", "DEFAULT_BATCH_SIZE", "DEFAULT_KEEP_MAPS",
    "DiagnosticsResult", "HEADS_METRIC", "ModelEntry", "STABILITY_METRIC", "attention_maps", "corrupted_conditions",
    "heads", "load_maps", "overfocus", "stability",
]
