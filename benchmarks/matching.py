r"""Hungarian matching speed: m2f_jax.matching (jit, batched) against scipy looped per element.

For each problem size, a batch of random cost matrices [B, N, M] (N = queries, M = targets)
is solved by `m2f_jax.matching.linear_sum_assignment` under jit (compiled first, timed with
`block_until_ready`) and by `scipy.optimize.linear_sum_assignment` called on each element of
the same batch (a host numpy array: no transfer counted). The two are timed in alternation;
median milliseconds per batch and their ratio (scipy time / JAX time: > 1 means JAX is faster)
are printed, with the time of `linear_sum_assignment_scipy` (scipy through
`jax.pure_callback` under jit, as a train step would call it: transfers and callback
included). The totals are checked to agree with scipy before timing.

  python benchmarks/matching.py                    # B=16, N in (100, 200), M in (1..100)
  python benchmarks/matching.py --costs integer    # small integer costs (many ties)
  python benchmarks/matching.py --optax            # also optax.assignment.hungarian_algorithm

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


def scipy_loop(cost: np.ndarray):
  return [optimize.linear_sum_assignment(c) for c in cost]


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
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--queries", type=int, nargs="+", default=[100, 200])
  parser.add_argument("--targets", type=int, nargs="+", default=[1, 10, 25, 50, 100])
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

  print(f"device: {jax.devices()[0].device_kind}, B={args.batch}, {args.costs} float32 costs, "
        f"median of {args.runs} runs (ms per batch)")
  header = f"{'N':>5} {'M':>5} {'jax':>9} {'scipy':>9} {'scipy/jax':>10} {'callback':>9}"
  print(header + (f" {'optax':>9}" if args.optax else ""))
  for n in args.queries:
    for m in args.targets:
      cost = make_costs(args.costs, args.batch, n, m)
      cost_dev = jax.device_put(jnp.asarray(cost))
      rows, cols = jax.block_until_ready(solve(cost_dev))
      ours = cost[np.arange(args.batch)[:, None], np.asarray(rows), np.asarray(cols)].sum(1)
      ref = np.array([c[r, s].sum() for c, (r, s) in zip(cost, scipy_loop(cost))])
      np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
      jax.block_until_ready(solve_callback(cost_dev))
      fns = [lambda: jax.block_until_ready(solve(cost_dev)), lambda: scipy_loop(cost),
             lambda: jax.block_until_ready(solve_callback(cost_dev))]
      if args.optax:
        jax.block_until_ready(solve_optax(cost_dev))
        fns.append(lambda: jax.block_until_ready(solve_optax(cost_dev)))
      times = median_ms(fns, args.runs)
      line = (f"{n:>5} {m:>5} {times[0]:>9.3f} {times[1]:>9.3f} {times[1] / times[0]:>10.2f} "
              f"{times[2]:>9.3f}")
      print(line + (f" {times[3]:>9.3f}" if args.optax else ""), flush=True)


if __name__ == "__main__":
  main()
