"""Command-line options shared by several commands, defined once so that their names and help stay in step."""

from __future__ import annotations

import typer

from attnprobe.cli._common import DEFAULT_OUT

# NOTE: not required at the Typer level, so a missing --model gets our one-line error (pair_models), not a usage box.
MODELS = typer.Option(None, "--model", "-m", help="Zoo name (fan_b_tapadl), official name or any timm model name; "
                      "repeat to compare several models on the same data.")
CKPTS = typer.Option(None, "--ckpt", help="Checkpoint file (.pth, .pth.tar, .bin, .safetensors) or model folder, one "
                     "per --model in order (default: the model's published weights; '-' for random weights, a smoke "
                     "test only).")
NUM_CLASSES = typer.Option(None, "--num-classes", min=0, help="Classifier outputs of every --model (default: as its "
                           "checkpoint has them, e.g. 10 for a model fine-tuned to 10 classes).")
OUT = typer.Option(DEFAULT_OUT, "--out", "-o", help="Output directory holding the results store (results.sqlite).")
WORKERS = typer.Option(None, "--workers", "-j", min=0,
                       help="Data loader processes per rank (default: min(8, CPU cores / ranks on the node)).")
LIMIT = typer.Option(None, "--limit", min=1, help="Evenly spaced subset of N samples per cell (quick checks).")
DEVICE = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: the local GPU if any, else cpu).")
FRESH = typer.Option(False, "--fresh", help="Recompute what the store already holds for these models and data "
                     "(the old rows are replaced).")
STRICT = typer.Option(False, "--strict", help="Fail on an unreadable file instead of skipping and counting it.")
JSON = typer.Option(False, "--json", help="Print the result as JSON on stdout (nothing else there; no progress bar).")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar and no warnings.")

# -- GPUs and precision (see attnprobe.engine.execution and attnprobe.engine.device_input) ---------------------------
PRECISION = typer.Option("fp32", "--precision", help="fp32 (default; paper numbers), bf16 or fp16: the model runs "
                         "under torch.autocast. A few predictions change; such results are stored apart from fp32.")
DECODE = typer.Option("auto", "--decode", help="Where images are decoded and resized: cpu (both in the loader "
                      "workers), workers (PIL decodes in the workers, the GPU resizes and normalises; same tensors), "
                      "gpu (nvJPEG decodes on the GPU too; close, not identical: stored under its own key), device "
                      "(gpu, or on CPU libjpeg-turbo in the main process). Default auto: workers on CUDA, else cpu.")
COMPILE = typer.Option(False, "--compile", help="torch.compile the model (compiles at the first batch; faster on "
                       "GPUs for long runs).")
CHANNELS_LAST = typer.Option(None, "--channels-last/--no-channels-last", help="NHWC memory format for model and "
                             "inputs (default: on CUDA for models with convolutions).")

# -- on-the-fly corruptions (see attnprobe.data.corruptions) ---------------------------------------------------------
CORRUPTION_BACKEND = typer.Option(None, "--corruption-backend", help="What corrupts the images: torch (default; the "
                                  "batched engine, on the model's device) or reference (the imagecorruptions package, "
                                  "one image at a time on the CPU; slow).")
CORRUPTION_RECIPE = typer.Option(None, "--corruption-recipe", help="imagenet-c (the code that made the released "
                                 "ImageNet-C) or imagecorruptions (the package behind Cityscapes-C). Default: "
                                 "imagenet-c for ImageNet images, imagecorruptions for Cityscapes; the reference "
                                 "backend has only imagecorruptions.")
