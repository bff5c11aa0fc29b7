"""One module per benchmark family, each a driver over the evaluation engine (`attnprobe.engine`):

* `clean`: clean top-1 accuracy on a validation folder;
* `imagenet_c`: ImageNet-C (released tree or on the fly), CE / mCE;
* `imagenet_p`: ImageNet-P (released or regenerated videos), FP / FR / mFR / top-5 distance;
* `imagenet_ar`: ImageNet-A and ImageNet-R (200-class logits);
* `pgd`: L-inf PGD robust accuracy.

A driver builds the cells (store key + dataset) and the scorer of its benchmark, calls `run_cells`, and turns the
totals into a result object; formulas live in `attnprobe.robustness`. A new benchmark is a new module here plus a
CLI module of the same name in `attnprobe.cli`.
"""
