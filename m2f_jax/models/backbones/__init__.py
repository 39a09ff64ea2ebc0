"""Backbones returning the feature pyramid res2..res5 (strides 4, 8, 16, 32), NHWC."""
