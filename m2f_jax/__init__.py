"""m2f_jax: Mask2Former (universal image segmentation) in JAX/Flax."""

__version__ = "0.1.0"
