"""Datasets: ImageNet-style folders with canonical wnid labels, ImageNet-C/-P trees, on-the-fly corruption."""
