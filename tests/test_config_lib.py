"""Configs (m2f_jax/config_lib.py, configs/*.py) and the dataset registry they draw on."""

import importlib.util
import pathlib

import pytest

from m2f_jax import config_lib
from m2f_jax import evaluation
from m2f_jax.data import datasets
from m2f_jax.data import transforms
from m2f_jax.data import video_pipeline

REPO = pathlib.Path(__file__).resolve().parent.parent
VARIANTS = {
    "tiny": ["", "slim"], "coco_panoptic": ["r50", "swin_l"], "coco_instance": ["r50"],
    "ade20k_semantic": ["r50", "swin_l"], "cityscapes_semantic": ["r50"],
    "cityscapes_panoptic": ["r50"], "custom": ["tiny", "slim", "r50", "swin_l"],
    "ytvis_2019": ["r50", "swin_l"], "ytvis_2021": ["r50", "swin_l"], "synthetic_video": [""],
    "vipseg": ["r50", "swin_l"],
}


def _load(name: str, arg: str):
  spec = importlib.util.spec_from_file_location(f"_cfg_{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _keys(tree, prefix=""):
  out = set()
  for k, v in tree.items():
    out |= _keys(v, f"{prefix}{k}.") if hasattr(v, "items") else {f"{prefix}{k}"}
  return out


def test_every_config_file_is_listed():
  assert {p.stem for p in (REPO / "configs").glob("*.py")} == set(VARIANTS)


@pytest.mark.parametrize("name,arg", [(n, a) for n, args in VARIANTS.items() for a in args])
def test_config_files_declare_no_fields_of_their_own(name, arg):
  """Every field outside `model` is declared once, in config_lib; config files set values."""
  config = _load(name, arg)
  base = config_lib.base_config(model=config.model, dataset=config.data.dataset,
                                task=config.data.task, max_steps=1)
  assert _keys(config) == _keys(base)
  assert config.data.augmentation in transforms.AUGMENTATIONS + video_pipeline.AUGMENTATIONS
  assert set(config.eval.evaluators) <= set(evaluation.EVALUATORS)


def test_dataset_specs_are_consistent():
  for name, spec in datasets.DATASETS.items():
    assert spec.name == name
    assert spec.augmentation in transforms.AUGMENTATIONS + video_pipeline.AUGMENTATIONS
    tasks = ("semantic", "instance", "panoptic", "video_instance", "video_panoptic")
    assert spec.task in tasks
    assert (spec.builder is None) != (spec.memory_source is None), name
    for task, names in spec.evaluators.items():
      assert task in tasks and set(names) <= set(
          evaluation.EVALUATORS), name


def test_defaults_come_from_the_dataset_spec():
  coco = config_lib.base_config(model=config_lib.model_config(config_lib.resnet_backbone(), 133),
                                dataset="coco_panoptic", task="panoptic", max_steps=1)
  assert coco.data.augmentation == "coco_lsj"
  assert (coco.eval.min_size, coco.eval.max_size) == (800, 1333)
  assert tuple(coco.eval.evaluators) == ("semantic", "panoptic", "instance")
  # The official Cityscapes panoptic config evaluates all three; its semantic one mIoU.
  assert tuple(config_lib.eval_config("cityscapes", "panoptic").evaluators) == (
      "semantic", "panoptic", "instance")
  assert tuple(config_lib.eval_config("cityscapes", "semantic").evaluators) == ("semantic",)
  assert tuple(config_lib.eval_config("coco_format", "panoptic").evaluators) == (
      "semantic", "panoptic", "instance")
  with pytest.raises(ValueError, match="unknown data.dataset 'cocoo'.*coco_panoptic"):
    config_lib.data_config("cocoo")


def test_video_panoptic_configs():
  vipseg = _load("vipseg", "r50")
  assert (vipseg.data.dataset, vipseg.data.task, vipseg.model.video) == (
      "vipseg", "video_panoptic", True)
  assert vipseg.model.num_classes == 124 and vipseg.data.batch_size == 8
  assert (vipseg.optim.max_steps, list(vipseg.optim.decay_steps)) == (20000, [14000])
  assert (vipseg.eval.min_size, vipseg.eval.max_size) == (720, 1333)
  assert tuple(vipseg.eval.evaluators) == ("video_panoptic", "video_instance")
  assert _load("vipseg", "swin_l").model.num_queries == 200
  with pytest.raises(ValueError, match="r50"):
    _load("vipseg", "r101")
  synthetic = _load("synthetic_video", "")
  assert synthetic.data.task == "video_panoptic" and synthetic.model.num_classes == 7
  # One evaluation shape, and every VPQ window fits the videos.
  assert synthetic.data.video_frames >= max(synthetic.eval.vpq_windows)
  assert tuple(synthetic.data.video_size) == (96, 96)


def test_tiny_slim_is_the_tiny_recipe_with_a_small_model_and_unknown_variants_raise():
  tiny, slim = _load("tiny", ""), _load("tiny", "slim")
  assert slim.model.backbone.depths == [1, 1, 1, 1] and slim.model.encoder_layers == 1
  for section in ("data", "loss", "optim", "train", "eval"):
    assert slim[section].to_dict() == tiny[section].to_dict(), section
  with pytest.raises(ValueError, match="configs/tiny.py:slim"):
    _load("tiny", "slimm")
