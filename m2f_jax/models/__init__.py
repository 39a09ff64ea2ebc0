"""Flax (linen) modules of Mask2Former: backbones, pixel decoder, transformer decoder."""
