"""Per-block rematerialization, the one switch of every repeated block (`train.remat`).

`remat_block(Block, enabled)` is `Block` itself when `enabled` is False, else
`flax.linen.remat(Block)`: the block keeps only its inputs for the backward pass and
recomputes its activations there, one block at a time, so the peak holds one block's
activations instead of every block's (a single checkpoint around the whole forward would
recompute it all at once and keep the peak). Variable names and shapes are those of `Block`
(`nn.remat(Block)(..., name=n)` creates the same `n/...` tree), so checkpoints and weight
import are unaffected. Python-valued call arguments (`train`, static shapes) must be passed
positionally at the indices in `static_argnums`, counting `self` as 0.
"""

import flax.linen as nn


def remat_block(block: type[nn.Module], enabled: bool,
                static_argnums: tuple[int, ...] = ()) -> type[nn.Module]:
  """`block`, or `nn.remat(block, static_argnums=...)` when `enabled`."""
  return nn.remat(block, static_argnums=static_argnums) if enabled else block
