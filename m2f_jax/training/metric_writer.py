"""Training metrics on disk: JSON lines (`metrics.jsonl`) and TensorBoard events."""

import json
import os

import jax


class MetricWriter:
  """JSON lines (`metrics.jsonl`) and TensorBoard events in the workdir (process 0 only)."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self._jsonl.flush()
    for k, v in metrics.items():
      self._tb.add_scalar(k, v, step)

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
