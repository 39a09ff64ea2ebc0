"""Tests for m2f_jax/matching.py: the batched JAX Hungarian solver against scipy.

Thousands of random matrices per call (few compiles): continuous, wide-range and small-integer
costs (many ties), N > M, N < M and square, random / all / no valid columns, NaN and inf
entries. Compared with `scipy.optimize.linear_sum_assignment` on the valid sub-matrix by total
cost (ties may give another optimal assignment), and checked to be a valid matching in scipy's
format.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from m2f_jax import matching


def random_costs(rng, batch, n, m, *, non_finite=False):
  """[B, N, M] float32: thirds of continuous, wide-range and integer (tied) costs."""
  third = batch // 3
  cost = np.concatenate([
      rng.random((third, n, m)),
      rng.standard_normal((third, n, m)) * 1e3,
      rng.integers(0, 4, (batch - 2 * third, n, m)),
  ]).astype(np.float32)
  if non_finite:  # Sprinkle NaN / +inf / -inf over every other matrix.
    hit = (rng.random(cost.shape) < 0.15) & (np.arange(batch) % 2 == 0)[:, None, None]
    cost[hit] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), size=hit.sum())
  return cost


def random_valid(rng, batch, m):
  """[B, M] bool: random masks, with all-valid and all-invalid elements."""
  valid = rng.random((batch, m)) < rng.random((batch, 1))
  valid[::7] = True
  valid[3::11] = False
  return valid


def clean_like_matching(cost, valid):
  """Numpy (float64) version of the documented non-finite replacement, for one matrix."""
  cost = cost.astype(np.float64)
  finite = np.isfinite(cost) & valid[None, :]
  lo, hi = (cost[finite].min(), cost[finite].max()) if finite.any() else (0.0, 0.0)
  big = hi + (min(cost.shape) + 1) * (hi - lo + 1)
  return np.where(np.isfinite(cost), cost, big)


def assert_matches_scipy(cost, valid, rows, cols):
  """Checks the format, the validity and the optimality of (rows, cols) for every element."""
  batch, n, m = cost.shape
  k = min(n, m)
  assert rows.shape == cols.shape == (batch, k)
  assert rows.dtype == cols.dtype == np.int32
  for b in range(batch):
    r, c = rows[b], cols[b]
    assert np.all(np.diff(r) > 0) and r.min(initial=0) >= 0 and r.max(initial=0) < n, r
    assert len(np.unique(c)) == k and c.min(initial=0) >= 0 and c.max(initial=0) < m, c
    if n <= m:
      np.testing.assert_array_equal(r, np.arange(n))
    cleaned = clean_like_matching(cost[b], valid[b])
    on_valid = valid[b][c]
    got = cleaned[r[on_valid], c[on_valid]]
    cols_ids = np.flatnonzero(valid[b])
    ref_r, ref_c = optimize.linear_sum_assignment(cleaned[:, cols_ids])
    ref = cleaned[ref_r, cols_ids[ref_c]]
    assert on_valid.sum() == len(ref_r), (b, on_valid.sum(), len(ref_r))
    tol = 1e-5 * (1 + np.abs(ref).sum())
    assert abs(got.sum() - ref.sum()) <= tol, (b, got.sum(), ref.sum(), cost[b], valid[b])
    # NaN / inf pairs only when unavoidable: as few as in scipy's optimum.
    finite = np.isfinite(cost[b])
    assert (~finite[r[on_valid], c[on_valid]]).sum() == (~finite[ref_r, cols_ids[ref_c]]).sum()


@pytest.mark.parametrize("n, m", [(9, 6), (6, 9)])
def test_random_batches_with_valid_cols_and_non_finite(n, m):
  rng = np.random.default_rng(n * 10 + m)
  batch = 1500
  cost = random_costs(rng, batch, n, m, non_finite=True)
  valid = random_valid(rng, batch, m)
  rows, cols = jax.jit(matching.linear_sum_assignment)(cost, valid)
  assert_matches_scipy(cost, valid, np.asarray(rows), np.asarray(cols))


def test_square_and_larger_without_valid_cols():
  rng = np.random.default_rng(1)
  solve = jax.jit(matching.linear_sum_assignment)
  for batch, n, m in [(900, 8, 8), (60, 40, 25), (3, 1, 1)]:
    cost = random_costs(rng, batch, n, m)
    rows, cols = solve(cost)
    assert_matches_scipy(cost, np.ones((batch, m), bool), np.asarray(rows), np.asarray(cols))
    if n == m == 8:  # Continuous costs have a unique optimum: the very same pairs.
      for b in range(batch // 3):
        np.testing.assert_array_equal(np.asarray(cols[b]),
                                      optimize.linear_sum_assignment(cost[b])[1])


def test_invalid_columns_take_leftover_rows():
  cost = np.array([[[5., 1., 0., 9.],
                    [1., 7., 0., 9.],
                    [2., 2., 0., 9.]]], np.float32)  # [1, 3, 4]
  valid = np.array([[True, True, False, False]])
  rows, cols = matching.linear_sum_assignment(cost, valid)
  # Valid columns 0, 1 -> rows 1, 0 (cost 2, not the zeros of column 2); the leftover row 2
  # takes the lowest invalid column 2; column 3 stays out (only min(N, M) = 3 pairs).
  np.testing.assert_array_equal(rows, [[0, 1, 2]])
  np.testing.assert_array_equal(cols, [[1, 0, 2]])
  # N > M with no valid column: every column takes a row, in order.
  rows, cols = matching.linear_sum_assignment(np.zeros((1, 3, 2), np.float32),
                                              np.zeros((1, 2), bool))
  np.testing.assert_array_equal(rows, [[0, 1]])
  np.testing.assert_array_equal(cols, [[0, 1]])


def test_non_finite_never_preferred():
  # transformers' matcher turns NaN into 0; here it must lose to any finite cost.
  cost = np.array([[[np.nan, 3.], [2., 3.]],
                   [[-np.inf, 0.], [0., 1.]],
                   [[0., 10.], [10., np.nan]],  # big must exceed 20 - 0 (here 10 + 3 * 11)
                   [[np.nan, np.nan], [np.inf, 4.]]], np.float32)
  rows, cols = matching.linear_sum_assignment(cost)
  np.testing.assert_array_equal(rows, [[0, 1]] * 4)
  np.testing.assert_array_equal(cols, [[1, 0], [1, 0], [1, 0], [0, 1]])


def test_empty_and_bad_shapes():
  for shape in [(2, 0, 3), (2, 3, 0), (0, 4, 4)]:
    rows, cols = matching.linear_sum_assignment(jnp.zeros(shape))
    assert rows.shape == cols.shape == (shape[0], min(shape[1:])) and rows.dtype == jnp.int32
  with pytest.raises(ValueError, match=r"\[B, N, M\]"):
    matching.linear_sum_assignment(jnp.zeros((3, 3)))
  with pytest.raises(ValueError, match="valid_cols"):
    matching.linear_sum_assignment(jnp.zeros((2, 3, 3)), jnp.ones((2, 4), bool))


def test_vmap_jit_grad_and_scipy_backend():
  rng = np.random.default_rng(2)
  cost = random_costs(rng, 2 * 30, 7, 5).reshape(2, 30, 7, 5)  # [L, B, N, M]
  valid = random_valid(rng, 2 * 30, 5).reshape(2, 30, 5)
  rows, cols = jax.jit(jax.vmap(matching.linear_sum_assignment))(cost, valid)
  assert rows.shape == (2, 30, 5)
  for layer in range(2):
    assert_matches_scipy(cost[layer], valid[layer], np.asarray(rows[layer]),
                         np.asarray(cols[layer]))
  # The scipy backend: same format, valid_cols semantics and optimal totals, also under vmap.
  rows_s, cols_s = jax.jit(jax.vmap(matching.linear_sum_assignment_scipy))(cost, valid)
  for layer in range(2):
    assert_matches_scipy(cost[layer], valid[layer], np.asarray(rows_s[layer]),
                         np.asarray(cols_s[layer]))

  # Inside a differentiated loss (the matching itself carries no gradient).
  def loss(x):
    r, c = matching.linear_sum_assignment(x)
    return x[jnp.arange(x.shape[0])[:, None], r, c].sum()

  x = jnp.asarray(cost[0, :4])
  grad = jax.jit(jax.grad(loss))(x)
  r, c = matching.linear_sum_assignment(x)
  expected = np.zeros(x.shape, np.float32)
  for b in range(4):
    expected[b, np.asarray(r[b]), np.asarray(c[b])] = 1
  np.testing.assert_array_equal(grad, expected)
