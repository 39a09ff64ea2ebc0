"""Metrics with Detectron2's report names, in percent.

  semantic.SemanticEvaluator  -> {"sem_seg": {"mIoU", "fwIoU", "mACC", "pACC"}}
  panoptic.PanopticEvaluator  -> {"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", ..., "RQ_st"}}
  instance.InstanceEvaluator  -> {"segm": {"AP", "AP50", "AP75", "APs", "APm", "APl"}}

Each is streaming: `update(...)` per image (keyword-only), `compute()` at the end, `merge`
to combine evaluators of several processes. The modules import numpy, Pillow and pycocotools,
not JAX. `python -m m2f_jax.evaluation.panoptic --help` evaluates panoptic predictions on disk.
"""

import importlib

# Imported on first use, so that `python -m m2f_jax.evaluation.panoptic` does not find its own
# module already imported by the package.
_EXPORTS = {
    "InstanceEvaluator": "instance", "mask_to_rle": "instance",
    "PanopticEvaluator": "panoptic", "pq_compute_files": "panoptic", "pq_stats": "panoptic",
    "SemanticEvaluator": "semantic", "confusion_matrix": "semantic",
    "semantic_metrics": "semantic",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
