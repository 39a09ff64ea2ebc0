"""The device mesh and the shardings of state and batches, for training and evaluation.

Data parallel over every device of every host: one mesh axis, "data". Batches are sharded
along it; parameters and optimizer state are replicated, or (`train.shard_params`) split
along their largest axis the device count divides (ZeRO-3 style, for large backbones). Each
process feeds its own rows of a global batch (`global_batch`).
"""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"  # the mesh axis


def make_mesh() -> jax.sharding.Mesh:
  """A 1-d mesh over every device of every process (axis "data")."""
  return jax.make_mesh((jax.device_count(),), (DATA,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def local_mesh() -> jax.sharding.Mesh:
  """A 1-d mesh over this process's devices (axis "data"): evaluation, where every process
  runs its own images and only the metrics are merged."""
  return jax.sharding.Mesh(np.array(jax.local_devices()), (DATA,),
                           axis_types=(jax.sharding.AxisType.Auto,))


def param_spec(x, num_devices: int, shard: bool) -> P:
  """Replicated, or (shard=True) split along the largest axis the device count divides."""
  if not shard or not hasattr(x, "shape") or x.ndim == 0:
    return P()
  for axis in sorted(range(x.ndim), key=lambda a: -x.shape[a]):
    if x.shape[axis] % num_devices == 0 and x.shape[axis] >= num_devices:
      spec = [None] * x.ndim
      spec[axis] = DATA
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh, shard_params: bool):
  """A NamedSharding per leaf of `abstract_state` (see `param_spec`)."""
  n = mesh.devices.size
  return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(x, n, shard_params)),
                      abstract_state)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def global_batch(local_batch: dict, mesh) -> dict:
  """This process's batch -> global jax.Arrays sharded over "data"."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
