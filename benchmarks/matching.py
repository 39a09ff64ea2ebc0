r"""Hungarian matching speed: m2f_jax.matching (jit, batched) against scipy looped per element.

The solver is called as the train step calls it (`criterion._solve`): a batch of random cost
matrices [B, N, M_pad] (N = queries, B = decoder stages x images per device, e.g. 10 x 2),
whose M_pad = `--num_targets` columns are the image's target slots (`data.num_targets`, 100
in the official configs), of which the first M (the table's M) are real and flagged in
`valid_cols` [B, M_pad]. `m2f_jax.matching.linear_sum_assignment(cost, valid_cols)` runs
under jit (compiled first, timed with `block_until_ready`); scipy, as the official matcher
calls it per image, solves each element's real columns `cost[b][:, :M]` (a host numpy array:
no transfer counted); `linear_sum_assignment_scipy(cost, valid_cols)` is scipy through
`jax.pure_callback` under jit (transfers and callback included). They are timed in
alternation; median milliseconds per batch and the ratio scipy / JAX (> 1: JAX is faster)
are printed. The totals over the real columns are checked to agree with scipy first.

  python benchmarks/matching.py                    # B=20, N in (100, 200), M in (1..100) of 100
  python benchmarks/matching.py --num_targets 0    # unpadded [B, N, M] (all columns real)
  python benchmarks/matching.py --costs integer    # small integer costs (many ties)
  python benchmarks/matching.py --optax            # also optax.assignment.hungarian_algorithm
                                                   # (it has no valid_cols: unpadded costs)

Runs on whatever device jax picks; needs only jax, numpy and scipy (and optax for --optax).
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

from m2f_jax import matching


def make_costs(kind: str, batch: int, n: int, m: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  if kind == "uniform":
    return rng.random((batch, n, m), dtype=np.float32)  # [B, N, M]
  return rng.integers(0, 10, (batch, n, m)).astype(np.float32)  # [B, N, M]


def scipy_loop(cost: np.ndarray, num_real: int):
  """The official matcher's per-image call, on each element's real columns [N, :M]."""
  return [optimize.linear_sum_assignment(c[:, :num_real]) for c in cost]


def median_ms(fns, runs: int):
  """Times each function `runs` times, in alternation; returns the median ms of each."""
  times = [[] for _ in fns]
  for _ in range(runs):
    for fn, t in zip(fns, times):
      start = time.perf_counter()
      fn()
      t.append(time.perf_counter() - start)
  return [1e3 * statistics.median(t) for t in times]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=20,
                      help="matrices per call: decoder stages x images per device (10 x 2)")
  parser.add_argument("--queries", type=int, nargs="+", default=[100, 200])
  parser.add_argument("--targets", type=int, nargs="+", default=[1, 10, 25, 50, 100],
                      help="real targets M per image")
  parser.add_argument("--num_targets", type=int, default=100,
                      help="target slots per image (data.num_targets; official configs: 100), "
                      "the first M real; 0: no padding (M slots, all real)")
  parser.add_argument("--costs", choices=["uniform", "integer"], default="uniform")
  parser.add_argument("--runs", type=int, default=20)
  parser.add_argument("--optax", action="store_true",
                      help="also time optax.assignment.hungarian_algorithm (jit + vmap)")
  args = parser.parse_args()

  solve = jax.jit(matching.linear_sum_assignment)
  solve_callback = jax.jit(matching.linear_sum_assignment_scipy)
  if args.optax:
    import optax  # pylint: disable=g-import-not-at-top
    solve_optax = jax.jit(jax.vmap(optax.assignment.hungarian_algorithm))

  padding = (f"M real of {args.num_targets} target slots (valid_cols), as the train step"
             if args.num_targets else "unpadded [B, N, M], all columns real")
  print(f"device: {jax.devices()[0].device_kind}, B={args.batch}, {args.costs} float32 costs, "
        f"{padding}; median of {args.runs} runs (ms per batch)")
  header = f"{'N':>5} {'M':>5} {'jax':>9} {'scipy':>9} {'scipy/jax':>10} {'callback':>9}"
  print(header + (f" {'optax':>9}" if args.optax else ""))
  for n in args.queries:
    for m in args.targets:
      slots = args.num_targets or m
      if slots < m:
        raise ValueError(f"--num_targets {args.num_targets} is below M={m}: give at least as "
                         "many target slots as real targets (0: no padding).")
      cost = make_costs(args.costs, args.batch, n, slots)  # [B, N, M_pad]
      valid = np.broadcast_to(np.arange(slots) < m, (args.batch, slots))  # [B, M_pad]
      cost_dev, valid_dev = jax.device_put((jnp.asarray(cost), jnp.asarray(valid)))
      rows, cols = map(np.asarray, jax.block_until_ready(solve(cost_dev, valid_dev)))
      real = np.take_along_axis(valid, cols, axis=1)  # pairs with a real column
      ours = np.where(real, cost[np.arange(args.batch)[:, None], rows, cols], 0).sum(1)
      ref = np.array([c[r, s].sum() for c, (r, s) in zip(cost, scipy_loop(cost, m))])
      np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
      jax.block_until_ready(solve_callback(cost_dev, valid_dev))
      fns = [lambda: jax.block_until_ready(solve(cost_dev, valid_dev)),
             lambda: scipy_loop(cost, m),
             lambda: jax.block_until_ready(solve_callback(cost_dev, valid_dev))]
      if args.optax:  # no valid_cols: the real columns only
        cost_real = jax.device_put(jnp.asarray(cost[:, :, :m]))
        jax.block_until_ready(solve_optax(cost_real))
        fns.append(lambda: jax.block_until_ready(solve_optax(cost_real)))
      times = median_ms(fns, args.runs)
      line = (f"{n:>5} {m:>5} {times[0]:>9.3f} {times[1]:>9.3f} {times[1] / times[0]:>10.2f} "
              f"{times[2]:>9.3f}")
      print(line + (f" {times[3]:>9.3f}" if args.optax else ""), flush=True)


if __name__ == "__main__":
  main()
