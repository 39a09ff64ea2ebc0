"""Mask2Former for video instance segmentation: clips in, one mask tube per query out.

Follows the official `VideoMaskFormer` (mask2former_video/video_maskformer_model.py) with its
`VideoMultiScaleMaskedTransformerDecoder`: the backbone and the pixel decoder of the image
model run on every frame (frames folded into the batch, so deformable attention stays within
a frame); the masked-attention decoder (`TransformerModule` given `[B, T, ...]` features)
attends to all T * h * w positions of a level at once, with the 3D sine position encoding,
and its queries predict one class per clip and a mask per frame.

The module tree is the image model's (`pixel_level_module/{encoder,decoder}`,
`transformer_module`, `class_predictor`), as the official video state dict reuses the image
names: image checkpoints initialize video models and video `.pkl` files convert with the
image rename table.

Differs from the official code in:
  * `frame_chunk`: the per-frame part may run over chunks of frames (a loop over slices of
    the folded batch; exact, as nothing mixes frames before the decoder) to bound the memory
    of long videos. The official inference runs all frames at once.
  * the batch of clips: the official model infers one video at a time (`bs = 1` outside
    training); here any B, every clip with the same T.
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from m2f_jax.models.pixel_decoder import PixelLevelModule
from m2f_jax.models.pixel_decoder import semantic_logits


class VideoMask2Former(nn.Module):
  """The video network.

  `__call__(clips [B, T, H, W, 3], train=False)` with H, W multiples of 32 and frames
  normalized as images are returns a dict of float32 arrays:
    pred_logits [B, Q, K+1]          class logits of the last layer (one per clip and query),
    pred_masks  [B, Q, T, H/4, W/4]  mask logits of the last layer, per frame,
    aux_logits  [L, B, Q, K+1]       the earlier stages in order (index 0: the learnable
    aux_masks   [L, B, Q, T, H/4, W/4]  queries before the first layer), as the image model.
  With `semantic_head` and `train`, also semantic_logits [B, T, H/4, W/4, K] (per frame, as
  the image model's).

  Attributes:
    frame_chunk: run the backbone and pixel decoder on at most this many frames (of the
      folded B * T) at a time; 0 = all at once.
  """
  pixel_level_module: PixelLevelModule
  transformer_module: nn.Module
  num_classes: int
  frame_chunk: int = 0
  semantic_head: bool = False
  dtype: Any = jnp.float32

  clip_input: ClassVar[bool] = True  # inputs are [B, T, H, W, 3] (see `example_input_shape`)

  def per_frame(self, frames: jnp.ndarray, train: bool):
    """Backbone + pixel decoder on [N, H, W, 3] folded frames, chunked if `frame_chunk`."""
    n = frames.shape[0]
    chunk = self.frame_chunk if 0 < self.frame_chunk < n else n
    outputs = [self.pixel_level_module(frames[start:start + chunk], train=train)
               for start in range(0, n, chunk)]
    if len(outputs) == 1:
      return outputs[0]
    mask_features = jnp.concatenate([o[0] for o in outputs], axis=0)
    levels = [jnp.concatenate([o[1][i] for o in outputs], axis=0)
              for i in range(len(outputs[0][1]))]
    return mask_features, levels

  @nn.compact
  def __call__(self, clips: jnp.ndarray, *, train: bool = False) -> dict[str, jnp.ndarray]:
    if clips.ndim != 5 or clips.shape[-1] != 3 or clips.shape[2] % 32 or clips.shape[3] % 32:
      raise ValueError(f"clips must be [B, T, H, W, 3] with H and W multiples of 32 (pad "
                       f"them), got shape {clips.shape}")
    b, t, h, w, _ = clips.shape
    mask_features, levels = self.per_frame(
        clips.astype(self.dtype).reshape(b * t, h, w, 3), train)
    unfold = lambda x: x.reshape(b, t, *x.shape[1:])  # [B*T, ...] -> [B, T, ...]
    hidden_states, masks = self.transformer_module(
        [unfold(x) for x in levels], unfold(mask_features),
        train=train)  # [L+1, B, Q, C], [L+1, B, Q, T, h, w]
    logits = nn.Dense(self.num_classes + 1, dtype=self.dtype, name="class_predictor")(
        hidden_states)  # [L+1, B, Q, K+1]
    logits = logits.astype(jnp.float32)
    masks = masks.astype(jnp.float32)
    assert masks.shape[1:] == (b, masks.shape[2], t, h // 4, w // 4), masks.shape
    outputs = {
        "pred_logits": logits[-1],
        "pred_masks": masks[-1],
        "aux_logits": logits[:-1],
        "aux_masks": masks[:-1],
    }
    if self.semantic_head:  # created always (init runs with train=False), returned in training
      sem = semantic_logits(unfold(mask_features), self.num_classes, self.dtype)
      if train:
        outputs["semantic_logits"] = sem
    return outputs
