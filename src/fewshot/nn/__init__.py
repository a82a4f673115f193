"""Reusable building blocks with no training logic."""

from fewshot.nn.backbones import MLP, Conv4, ConvMap, KochNet, build_backbone, make_norm

__all__ = ["MLP", "Conv4", "ConvMap", "KochNet", "build_backbone", "make_norm"]
