"""Generic mapping of a PyTorch state dict onto a Flax variable tree.

The Flax modules are named after the PyTorch modules of transformers' checkpoints (the names
`save_pretrained` writes), so one rule maps a tensor name to a Flax path:

  * a numeric component joins the component before it: `layers.3.fc1` -> `layers_3/fc1`,
    `input_projections.0.1` -> `input_projections_0_1`;
  * the leaf `weight` becomes `kernel` (convolutions OIHW -> HWIO, linears [out, in] ->
    [in, out]), `scale` (normalization layers) or `embedding` (nn.Embedding), whichever the
    Flax module has; `bias` stays; `running_mean` / `running_var` go to the `batch_stats`
    collection as `mean` / `var`; any other leaf (a raw `nn.Parameter` such as
    `level_embed` or `relative_position_bias_table`) keeps its name and PyTorch layout.

Other checkpoint formats (Detectron2, torchvision, the official Swin releases) are first
renamed to transformers' names (see `m2f_jax.convert.detectron2`), then mapped by this rule.
"""

from collections.abc import Iterable, Mapping
import re

import flax
import jax
import numpy as np


class ConversionError(ValueError):
  """A checkpoint does not fit the model: the message names every offending tensor."""


_NUMERIC = re.compile(r"^\d+$")


def module_path(name: str) -> tuple[str, ...]:
  """`a.layers.0.b.1.2` -> ('a', 'layers_0', 'b_1_2')."""
  out: list[str] = []
  for part in name.split("."):
    if _NUMERIC.match(part) and out:
      out[-1] = f"{out[-1]}_{part}"
    else:
      out.append(part)
  return tuple(out)


def _flatten(tree) -> dict[tuple[str, ...], object]:
  return {tuple(k): v for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch
    value = value.detach().cpu().float().numpy() if value.is_floating_point() else value.cpu().numpy()
  return np.asarray(value)


def state_dict_to_variables(
    state_dict: Mapping[str, object],
    abstract_variables,
    *,
    ignore: Iterable[str] = (),
    source: str = "checkpoint",
) -> dict:
  """Maps `state_dict` (tensor name -> array) onto the shapes of `abstract_variables`.

  Args:
    state_dict: tensor names (already stripped of any prefix that the Flax tree does not
      have) to torch tensors or numpy arrays.
    abstract_variables: the target tree, e.g. `jax.eval_shape(model.init, ...)`; leaves
      need `.shape` and `.dtype`.
    ignore: regular expressions of tensor names to drop (buffers the model recomputes,
      heads it does not have).
    source: how to name the checkpoint in error messages.

  Returns:
    A variable dict with numpy leaves, of the same structure as `abstract_variables`.

  Raises:
    ConversionError: naming every missing, unexpected or wrongly shaped tensor; nothing is
      returned partially.
  """
  targets = _flatten(abstract_variables)
  ignore_res = [re.compile(p) for p in ignore]
  out: dict[tuple[str, ...], np.ndarray] = {}
  origin: dict[tuple[str, ...], str] = {}
  unexpected, wrong_shape = [], []
  for name, tensor in state_dict.items():
    if any(p.search(name) for p in ignore_res) or name.endswith("num_batches_tracked"):
      continue
    path = module_path(name)
    mod, leaf = path[:-1], path[-1]
    value = _to_numpy(tensor)
    if leaf == "weight":
      candidates = [
          (("params",) + mod + ("kernel",), _kernel_layout),
          (("params",) + mod + ("scale",), None),
          (("params",) + mod + ("embedding",), None),
          (("params",) + mod + ("weight",), None),
      ]
    elif leaf == "running_mean":
      candidates = [(("batch_stats",) + mod + ("mean",), None)]
    elif leaf == "running_var":
      candidates = [(("batch_stats",) + mod + ("var",), None)]
    else:
      candidates = [(("params",) + mod + (leaf,), None)]
    for target, layout in candidates:
      if target in targets:
        break
    else:
      unexpected.append(name)
      continue
    if layout is not None:
      value = layout(value)
    want = tuple(targets[target].shape)
    if value.shape != want:
      wrong_shape.append(
          f"  {name}: checkpoint shape {tuple(_to_numpy(tensor).shape)} -> {value.shape}"
          f" in Flax layout, model expects {want} at {'/'.join(target)}")
      continue
    if target in out:
      raise ConversionError(f"{source}: tensors {origin[target]!r} and {name!r} both map to "
                            f"{'/'.join(target)}")
    out[target] = value.astype(targets[target].dtype)
    origin[target] = name
  missing = sorted("/".join(t) for t in targets if t not in out)
  problems = []
  if wrong_shape:
    problems.append("tensors of the wrong shape (is the config the one the checkpoint was "
                    "trained with?):\n" + "\n".join(wrong_shape))
  if missing:
    problems.append("model variables with no tensor in the checkpoint:\n  " +
                    "\n  ".join(missing))
  if unexpected:
    problems.append("checkpoint tensors the model has no place for:\n  " +
                    "\n  ".join(sorted(unexpected)))
  if problems:
    raise ConversionError(f"{source} does not fit the model; nothing was converted.\n" +
                          "\n".join(problems))
  return flax.traverse_util.unflatten_dict(out)


def _kernel_layout(w: np.ndarray) -> np.ndarray:
  if w.ndim == 4:  # conv [O, I, kh, kw] -> [kh, kw, I, O]
    return np.transpose(w, (2, 3, 1, 0))
  if w.ndim == 2:  # linear [out, in] -> [in, out]
    return w.T
  return w


def abstract_variables(model, *example_args, **example_kwargs):
  """The shapes of `model.init` without computing anything."""
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *example_args, **example_kwargs))
