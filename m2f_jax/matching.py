"""Batched linear assignment (Hungarian matching) in pure JAX, for the matcher of the criterion.

`linear_sum_assignment(cost [B, N, M])` returns, for every batch element, what
`scipy.optimize.linear_sum_assignment` returns (rows ascending, `min(N, M)` pairs, an optimal
total cost; ties may pick a different optimal assignment). It runs inside a jitted train step
on CPU, GPU and TPU (no host callback), and composes with `jax.vmap` (e.g. over the decoder
layers). `linear_sum_assignment_scipy` is the same function through `jax.pure_callback`, kept
for comparisons and benchmarks. The official Mask2Former (`matcher.py`) and transformers
(`Mask2FormerHungarianMatcher`) run scipy on the host per image instead.

Algorithm: the shortest augmenting path method with dual potentials of scipy (Crouse, "On
implementing 2D rectangular assignment algorithms", IEEE TAES 2016), rows being the smaller
side, started from a row-reduction greedy matching (each row's cheapest column, when no
lower-numbered row wants it). The whole solve of one batch element is ONE `lax.while_loop`
whose step labels one column (Dijkstra step) and, when that column is free, updates the
potentials and flips the augmenting path in the same step (the rows on the path are tracked by
an ancestor bit matrix [R, R]), so under `vmap` the batch runs max over elements (not a sum
over rows of a max) of the steps. Float costs are solved in float32 (float64 with x64).

optax 0.2.8, measured here (CPU) before writing this: `optax.assignment.hungarian_algorithm`
and `base_hungarian_algorithm` are exact (total cost equal to scipy's on 3,000 random matrices,
square and rectangular both ways, continuous, wide-range and integer costs with ties), but the
first returns rows in descending order and both are slow under jit+vmap: the first scans the
rows with a while loop per row, so a vmapped batch waits for its slowest element at every row;
the second is 10-40x slower still. Median ms per batch of B=16 uniform float32 [B, N, M]
(2-core CPU; `python benchmarks/matching.py --optax --num_targets 0 --batch 16`, unpadded):
  N, M             100,10  100,50  100,100  200,10  200,50  200,100
  this module         0.53    2.2     21       0.52    2.2     2.9
  optax               0.58    3.8     65       0.73    8.2    21
  scipy loop          0.16    0.91     4.3     0.18    1.3     2.5
  scipy callback      0.97    2.8      6.3     0.93    3.7     4.5   (under jit)
This module is exact on the same tests (and 7,800 more matrices up to 200 x 100: zero
difference with scipy's float64 totals) and 1.1-7x faster than optax, so it is used.

Non-finite costs: every NaN, +inf and -inf entry is replaced, per batch
element, by `big = hi + (min(N, M) + 1) * (hi - lo + 1)`, with lo / hi the smallest / largest
finite cost of the valid columns (0 / 0 if none). `big` exceeds any saving that avoiding it
could cost, so the assignment uses the smallest possible number of non-finite pairs (none when
a finite full matching exists: then the result is scipy's with inf meaning "forbidden") and
is optimal on the finite ones; a NaN never turns into a cheap pair (transformers' matcher
replaces NaN by 0). Finite costs should stay well inside float range (|cost| << 1e30).
"""

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def linear_sum_assignment(cost: jnp.ndarray, valid_cols: jnp.ndarray | None = None):
  """Solves the linear assignment problem for each matrix of a batch, like scipy.

  Args:
    cost: float `[B, N, M]` (any N, M; in the matcher N = queries, M = padded targets).
    valid_cols: optional bool `[B, M]`, True for the real columns (targets) of each element.
      The valid columns are matched optimally among themselves: the total cost over the pairs
      with a valid column equals scipy's on the valid sub-matrix `cost[b][:, valid_cols[b]]`
      (all of them are matched when N >= their number, else the N best). The invalid columns
      then take the leftover rows (lowest leftover row with lowest leftover invalid column),
      so that there are always `min(N, M)` pairs: callers drop the pairs whose column is
      invalid (`valid_cols[b, cols[b]]`). None means every column is valid.

  Returns:
    `(rows, cols)`, int32 `[B, min(N, M)]`: for each element `cost[b, rows[b], cols[b]]` are
    the assigned pairs, `rows[b]` ascending (all rows `0..N-1` when N <= M), as
    `scipy.optimize.linear_sum_assignment(cost[b])` returns them. `[B, 0]` when N or M is 0.
    NaN / inf costs: see the module docstring. No gradient flows through `cost` (it is
    stop-gradient'ed); integer and 16-bit costs are solved in float32.
  """
  cost, valid_cols = _check_inputs(cost, valid_cols, "linear_sum_assignment")
  batch, n, m = cost.shape
  if min(n, m) == 0:
    empty = jnp.zeros((batch, 0), jnp.int32)
    return empty, empty
  cost = _replace_non_finite(jax.lax.stop_gradient(cost), valid_cols)
  return jax.vmap(_solve_one)(cost, valid_cols)


@jax.jit
def linear_sum_assignment_scipy(cost: jnp.ndarray, valid_cols: jnp.ndarray | None = None):
  """`linear_sum_assignment` computed by scipy on the host (`jax.pure_callback`).

  Same signature, semantics and non-finite handling; for comparisons and benchmarks only (it
  stalls the device while the host solves, and cannot run on TPU pods without a host).
  """
  cost, valid_cols = _check_inputs(cost, valid_cols, "linear_sum_assignment_scipy")
  batch, n, m = cost.shape
  k = min(n, m)
  if k == 0:
    empty = jnp.zeros((batch, 0), jnp.int32)
    return empty, empty
  cost = _replace_non_finite(jax.lax.stop_gradient(cost), valid_cols)
  out = jax.ShapeDtypeStruct((batch, k), jnp.int32)
  return jax.pure_callback(_scipy_host, (out, out), cost, valid_cols, vmap_method="broadcast_all")


# ------------------------------------------------------------------------------------------
# Input checks and cleaning.
# ------------------------------------------------------------------------------------------


def _check_inputs(cost, valid_cols, name):
  cost = jnp.asarray(cost)
  if cost.ndim != 3:
    raise ValueError(f"m2f_jax.matching.{name}: cost must be [B, N, M], got shape {cost.shape}; "
                     "add a leading batch axis (cost[None]) for a single matrix.")
  if not jnp.issubdtype(cost.dtype, jnp.floating) or cost.dtype.itemsize < 4:
    cost = cost.astype(jnp.float32)
  batch, _, m = cost.shape
  if valid_cols is None:
    valid_cols = jnp.ones((batch, m), bool)
  valid_cols = jnp.asarray(valid_cols)
  if valid_cols.shape != (batch, m):
    raise ValueError(f"m2f_jax.matching.{name}: valid_cols has shape {valid_cols.shape}, "
                     f"expected [B, M] = {(batch, m)} for cost {cost.shape}.")
  return cost, valid_cols.astype(bool)


def _replace_non_finite(cost, valid_cols):
  """Replaces NaN/inf by `big` per element (see the module docstring)."""
  n, m = cost.shape[1:]
  finite = jnp.isfinite(cost) & valid_cols[:, None, :]  # [B, N, M]
  any_finite = finite.any(axis=(1, 2))
  lo = jnp.where(any_finite, jnp.min(jnp.where(finite, cost, jnp.inf), axis=(1, 2)), 0)  # [B]
  hi = jnp.where(any_finite, jnp.max(jnp.where(finite, cost, -jnp.inf), axis=(1, 2)), 0)
  big = hi + (min(n, m) + 1) * (hi - lo + 1)
  return jnp.where(jnp.isfinite(cost), cost, big[:, None, None])


def _scipy_host(cost, valid_cols):
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  cost, valid_cols = np.asarray(cost), np.asarray(valid_cols)
  lead = cost.shape[:-2]
  n, m = cost.shape[-2:]
  k = min(n, m)
  cost = cost.reshape(-1, n, m)
  valid_cols = np.broadcast_to(valid_cols, lead + (m,)).reshape(-1, m)
  rows = np.zeros((cost.shape[0], k), np.int32)
  cols = np.zeros((cost.shape[0], k), np.int32)
  for b in range(cost.shape[0]):
    valid = np.flatnonzero(valid_cols[b])
    row2col = np.full(n, -1)
    r, c = optimize.linear_sum_assignment(cost[b][:, valid])
    row2col[r] = valid[c]
    free_rows = np.flatnonzero(row2col < 0)
    free_cols = np.flatnonzero(~valid_cols[b])
    fill = k - len(r)
    row2col[free_rows[:fill]] = free_cols[:fill]
    rows[b] = np.flatnonzero(row2col >= 0)
    cols[b] = row2col[rows[b]]
  return rows.reshape(lead + (k,)), cols.reshape(lead + (k,))


# ------------------------------------------------------------------------------------------
# The solver (one batch element; vmapped by the caller).
# ------------------------------------------------------------------------------------------


def _solve_one(cost, valid):
  """Returns (rows, cols) [min(N, M)] for cost [N, M] and valid [M]."""
  n, m = cost.shape
  num_valid = valid.sum()
  # Targets (columns) that are valid, first and in order; the rest after them.
  targets = _partition(valid)  # [M]
  if n >= m:
    # Work rows = the valid columns of `cost` (compacted), work columns = the rows of `cost`.
    work = jnp.take(cost, targets, axis=1).T  # [M, N]
    allowed = jnp.ones((n,), bool)
    num_active = num_valid
    transposed = jnp.array(True)
  else:
    # Rows = the N rows of `cost` against its valid columns, unless fewer than N columns are
    # valid: then the valid columns are the rows (as above), against the N rows of `cost`.
    transposed = num_valid <= n
    work_t = jnp.take(cost, targets[:n], axis=1).T  # [N, N]
    work_t = jnp.pad(work_t, ((0, 0), (0, m - n)))  # [N, M]
    work = jnp.where(transposed, work_t, cost)  # [N, M]
    allowed = jnp.where(transposed, jnp.arange(m) < n, valid)
    num_active = jnp.where(transposed, num_valid, n)
  num_rows = work.shape[0]
  col4row = _shortest_augmenting_paths(work, jnp.arange(num_rows) < num_active, allowed)
  # Back to the rows / columns of `cost`: row2col[N] (-1 = unassigned).
  active = jnp.arange(num_rows) < num_active
  row_idx = jnp.where(transposed, col4row, jnp.arange(num_rows))
  col_idx = jnp.where(transposed, targets[:num_rows], col4row)
  row2col = jnp.full((n,), -1, jnp.int32)
  row2col = row2col.at[jnp.where(active, row_idx, n)].set(col_idx, mode="drop")
  # Leftover rows take the leftover (invalid) columns, in increasing order of both.
  k = min(n, m)
  col_used = jnp.zeros((m,), bool).at[jnp.where(row2col >= 0, row2col, m)].set(True, mode="drop")
  free_rows = _partition(row2col < 0)[:k]  # [min(N, M)] unassigned rows first
  free_cols = _partition(~col_used)[:k]  # [min(N, M)] unassigned columns first
  fill = jnp.arange(k) < k - jnp.minimum(num_active, k)
  row2col = row2col.at[jnp.where(fill, free_rows, n)].set(free_cols, mode="drop")
  if n <= m:
    return jnp.arange(n, dtype=jnp.int32), row2col
  rows = _partition(row2col >= 0)[:k]
  return rows, row2col[rows]


def _first(mask, axis=-1):
  """Index of the first True along `axis` (size of the axis if none).

  A min-reduction of indices: XLA's argmin/argmax (variadic reductions) are several times
  slower on CPU.
  """
  size = mask.shape[axis]
  ids = jax.lax.broadcasted_iota(jnp.int32, mask.shape, axis % mask.ndim)
  return jnp.where(mask, ids, size).min(axis=axis)


def _partition(mask):
  """Indices of the True entries of mask [K] in order, then those of the False entries."""
  size = mask.shape[0]
  count = mask.sum(dtype=jnp.int32)
  pos = jnp.where(mask, jnp.cumsum(mask, dtype=jnp.int32) - 1,
                  count + jnp.cumsum(~mask, dtype=jnp.int32) - 1)
  return jnp.zeros((size,), jnp.int32).at[pos].set(jnp.arange(size, dtype=jnp.int32),
                                                    unique_indices=True)


def _shortest_augmenting_paths(work, active, allowed):
  """Min-cost matching of every active row of work [R, K] to distinct allowed columns.

  Needs R <= K and at least as many allowed columns as active rows (active rows come first).
  Returns col4row [R] int32 (-1 for inactive rows).
  """
  num_rows, num_cols = work.shape
  dtype = work.dtype
  inf = jnp.array(jnp.inf, dtype)
  row_ids = jnp.arange(num_rows, dtype=jnp.int32)
  col_ids = jnp.arange(num_cols, dtype=jnp.int32)

  # Greedy start (row reduction): u = row minima, v = 0; each row takes its cheapest column
  # when no lower-numbered row wants it. Feasible duals, tight matched pairs, v = 0 on free
  # columns: the invariants of the shortest augmenting path method.
  masked = jnp.where(allowed[None, :], work, inf)
  u = masked.min(axis=1)  # [R]
  best = _first(masked == u[:, None], axis=1)  # [R] the cheapest column of each row
  claim = jnp.full((num_cols,), num_rows, jnp.int32)
  claim = claim.at[jnp.where(active, best, num_cols)].min(row_ids, mode="drop")
  row4col = jnp.where(claim < num_rows, claim, -1)  # [K]
  col4row = jnp.where(active & (claim[best] == row_ids), best, -1)  # [R]
  u = jnp.where(active, u, 0)
  v = jnp.zeros((num_cols,), dtype)

  def first_unassigned(col4row):
    todo = active & (col4row < 0)
    return _first(todo), todo.any()

  root, has_root = first_unassigned(col4row)
  state = dict(
      u=u, v=v, col4row=col4row, row4col=row4col,
      root=root, row=root, done=~has_root, min_value=jnp.zeros((), dtype),
      dist=jnp.full((num_cols,), jnp.inf, dtype),  # shortest path costs to the columns
      path=jnp.full((num_cols,), -1, jnp.int32),  # predecessor row of each column
      scanned_cols=jnp.zeros((num_cols,), bool),
      scanned_rows=jnp.zeros((num_rows,), bool).at[root].set(True),
      # ancestors[i]: the rows on the tree path from the root to row i (itself included).
      ancestors=jnp.zeros((num_rows, num_rows), bool).at[root].set(row_ids == root),
      steps=jnp.zeros((), jnp.int32))
  max_steps = num_rows * (num_cols + 1)

  def cond(s):
    return ~s["done"] & (s["steps"] < max_steps)

  def body(s):
    i = s["row"]
    remaining = allowed & ~s["scanned_cols"]
    reduced = s["min_value"] + work[i] - s["u"][i] - s["v"]  # [K]
    better = remaining & (reduced < s["dist"])
    path = jnp.where(better, i, s["path"])
    dist = jnp.where(better, reduced, s["dist"])
    score = jnp.where(remaining, dist, inf)
    lowest = score.min()
    free = s["row4col"] < 0
    # The cheapest remaining column, the first free one among equals (shorter paths, as
    # scipy), else the first one.
    key = jnp.where(remaining & (score == lowest), col_ids + jnp.where(free, 0, num_cols),
                    2 * num_cols).min()
    j = jnp.where(key >= num_cols, key - num_cols, key)
    scanned_cols = s["scanned_cols"] | (col_ids == j)
    sink = free[j]
    pred = path[j]

    # Case 1: j is matched: continue from its row.
    next_row = s["row4col"][j]
    # Case 2: j is free: update potentials, flip the path root -> ... -> pred -> j.
    root = s["root"]
    others = s["scanned_rows"] & (row_ids != root)
    u = s["u"] + jnp.where(row_ids == root, lowest,
                           jnp.where(others, lowest - dist[jnp.maximum(s["col4row"], 0)], 0))
    v = jnp.where(scanned_cols, s["v"] - (lowest - dist), s["v"])
    on_path_rows = s["ancestors"][pred]  # [R]
    row4col_old = s["row4col"]
    on_path_cols = (col_ids == j) | ((row4col_old >= 0) & on_path_rows[jnp.maximum(row4col_old, 0)])
    row4col = jnp.where(on_path_cols, path, row4col_old)
    col4row = s["col4row"].at[jnp.where(on_path_cols, path, num_rows)].set(col_ids, mode="drop")
    new_root, has_root = first_unassigned(col4row)

    def pick(a, b):
      return jnp.where(sink, a, b)

    target = pick(new_root, next_row)
    new_ancestors = pick(row_ids == new_root, s["ancestors"][pred] | (row_ids == next_row))
    return dict(
        u=pick(u, s["u"]), v=pick(v, s["v"]),
        col4row=pick(col4row, s["col4row"]), row4col=pick(row4col, row4col_old),
        root=pick(new_root, root), row=target, done=sink & ~has_root,
        min_value=pick(jnp.zeros((), dtype), lowest),
        dist=pick(jnp.full_like(dist, jnp.inf), dist),
        path=path,
        scanned_cols=pick(jnp.zeros_like(scanned_cols), scanned_cols),
        scanned_rows=pick(row_ids == new_root, s["scanned_rows"] | (row_ids == next_row)),
        ancestors=s["ancestors"].at[target].set(new_ancestors),
        steps=s["steps"] + 1)

  state = jax.lax.while_loop(cond, body, state)
  return state["col4row"]
