"""Reusable building blocks with no training logic."""

from fewshot.nn.backbones import MLP, BatchStatNorm, Conv4, ConvMap, KochNet, as_plain_tensor_norms, build_backbone, make_norm

__all__ = ["MLP", "BatchStatNorm", "as_plain_tensor_norms", "Conv4", "ConvMap", "KochNet", "build_backbone", "make_norm"]
