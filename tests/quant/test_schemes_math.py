"""Each 8-bit scheme computes its definition (../shared/DESIGN.md), on both implementations, and
MixQ's online outlier prediction grows, uses and freezes the outlier set."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixq_jax.layers import ActQuant, QuantDense, outlier_weight_columns
from mixq_jax.quant.rtn import quantize_int8_per_channel
from mixq_jax.schemes import OUTLIER_COLS, LayerQuant

M, K, N, C = 12, 48, 32, 8


def _per_token(x):  # reference per-token symmetric int8
  s = np.abs(x).max(axis=1) / 127.0
  s = np.where(s == 0, 1.0, s)
  return np.clip(np.rint(x / s[:, None]), -127, 127), s


class Site(nn.Module):
  lq: LayerQuant
  impl: str = "xla"

  @nn.compact
  def __call__(self, x, detect=False):
    qa = ActQuant(self.lq, self.impl, name="site")(x[None], jnp.ones((1, x.shape[0]), bool), detect)
    return QuantDense(K, N, False, jnp.bfloat16, self.impl, self.lq, detect=detect, name="dense")(qa)


def _weights(rng):
  w = rng.normal(0, 0.05, (N, K)).astype(np.float32)
  w_q, s_w = quantize_int8_per_channel(w)
  return w, w_q, s_w


def _x(rng, hot=()):
  x = rng.normal(0, 1.0, (M, K)).astype(np.float32)
  for col, val in hot:
    x[:, col] = val * rng.choice([-1, 1], M) * rng.uniform(0.8, 1.0, M)
  return np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))


@pytest.mark.parametrize("impl", ["xla", "interpret"])
def test_w8a16_and_w8a8(impl):
  rng = np.random.default_rng(0)
  w, w_q, s_w = _weights(rng)
  x = _x(rng)
  for scheme in ("w8a16", "w8a8"):
    lq = LayerQuant(scheme=scheme)
    params = {"dense": {"w_q": w_q, "s_w": s_w}}
    y = np.asarray(Site(lq, impl).apply({"params": params}, jnp.asarray(x, jnp.bfloat16)), np.float32)
    if scheme == "w8a16":
      ref = x @ (w_q * s_w[:, None]).T
    else:
      xq, sx = _per_token(x)
      ref = (xq @ w_q.T.astype(np.float64)) * sx[:, None] * s_w[None, :]
    np.testing.assert_allclose(y, ref, rtol=2e-2, atol=2e-2 * np.abs(ref).max())
    assert np.abs(y - x @ w.T).max() < 0.05 * np.abs(x @ w.T).max()  # and it approximates x Wᵀ


@pytest.mark.parametrize("impl", ["xla", "interpret"])
def test_llm_int8_dynamic_columns(impl):
  rng = np.random.default_rng(1)
  w, w_q, s_w = _weights(rng)
  x = _x(rng, hot=[(5, 40.0), (30, 9.0)])
  lq = LayerQuant(scheme="llm_int8", capacity=C)
  y = np.asarray(Site(lq, impl).apply({"params": {"dense": {"w_q": w_q, "s_w": s_w}}}, jnp.asarray(x, jnp.bfloat16)),
                 np.float32)
  hot = np.abs(x).max(axis=0) > 6.0
  assert set(np.flatnonzero(hot)) == {5, 30}
  xq, sx = _per_token(np.where(hot, 0.0, x))
  w_deq = (w_q * s_w[:, None]).astype(np.float32)
  ref = (xq @ w_q.T.astype(np.float64)) * sx[:, None] * s_w[None, :] + np.where(hot, x, 0.0) @ w_deq.T
  np.testing.assert_allclose(y, ref, rtol=2e-2, atol=2e-2 * np.abs(ref).max())


def _mix8_vars(rng, calib_cols):
  w, _, _ = _weights(rng)
  ignore = np.zeros(K, bool)
  ignore[calib_cols] = True
  w_q, s_w = quantize_int8_per_channel(w, ignore)
  idx = np.zeros(C, np.int32)
  idx[:len(calib_cols)] = calib_cols
  w_o = np.zeros((N, C), np.float32)
  w_o[:, :len(calib_cols)] = w[:, calib_cols]
  params = {"dense": {"w_q": w_q, "s_w": s_w, "w_o": np.asarray(jnp.asarray(w_o, jnp.bfloat16))}}
  outl = {"site": {"idx": idx, "count": np.int32(len(calib_cols)), "calib_count": np.int32(len(calib_cols))}}
  return w, w_q, s_w, {"params": params, "outliers": outl}


def _mix8_ref(x, w, w_q, s_w, outl_set, calib_cols):
  is_out = np.zeros(K, bool)
  is_out[list(outl_set)] = True
  xq, sx = _per_token(np.where(is_out, 0.0, x))
  w_i = np.zeros((N, K), np.float32)  # 16-bit weight columns: stored for calibration columns,
  for j in outl_set:                  # dequantized int8 for columns added online
    w_i[:, j] = w[:, j] if j in calib_cols else w_q[:, j] * s_w
  w_i = np.asarray(jnp.asarray(w_i, jnp.bfloat16).astype(jnp.float32))
  return (xq @ w_q.T.astype(np.float64)) * sx[:, None] * s_w[None, :] + np.where(is_out, x, 0.0) @ w_i.T


@pytest.mark.parametrize("impl", ["xla", "interpret"])
def test_mix8_online_prediction(impl):
  rng = np.random.default_rng(2)
  calib = [3, 17]
  w, w_q, s_w, variables = _mix8_vars(rng, calib)
  model = Site(LayerQuant(scheme="mix8", capacity=C), impl)
  # Call 1 (detecting): column 40 crosses σ after calibration -> added, and already used in this call.
  x1 = _x(rng, hot=[(3, 30.0), (40, 25.0)])
  y1, st = model.apply(variables, jnp.asarray(x1, jnp.bfloat16), detect=True, mutable=["outliers"])
  s = st["outliers"]["site"]
  assert int(s["count"]) == 3 and list(np.asarray(s["idx"])[:3]) == [3, 17, 40]
  assert int(s["calib_count"]) == 2
  ref1 = _mix8_ref(x1, w, w_q, s_w, {3, 17, 40}, calib)
  np.testing.assert_allclose(np.asarray(y1, np.float32), ref1, rtol=2e-2, atol=2e-2 * np.abs(ref1).max())
  variables = {**variables, **st}
  # Frozen (detect off): a new hot column 7 is not added; the set is reused as is.
  x2 = _x(rng, hot=[(7, 20.0), (40, 25.0)])
  y2, st2 = model.apply(variables, jnp.asarray(x2, jnp.bfloat16), detect=False, mutable=["outliers"])
  assert int(st2["outliers"]["site"]["count"]) == 3
  ref2 = _mix8_ref(x2, w, w_q, s_w, {3, 17, 40}, calib)
  np.testing.assert_allclose(np.asarray(y2, np.float32), ref2, rtol=2e-2, atol=2e-2 * np.abs(ref2).max())
  # ... and costs no detection: the frozen call's program has no top-k / column search.
  frozen = jax.make_jaxpr(lambda v, x: model.apply(v, x, detect=False, mutable=["outliers"]))(
      variables, jnp.asarray(x2, jnp.bfloat16))
  detecting = jax.make_jaxpr(lambda v, x: model.apply(v, x, detect=True, mutable=["outliers"]))(
      variables, jnp.asarray(x2, jnp.bfloat16))
  assert "top_k" in str(detecting) and "top_k" not in str(frozen)


def _gathers(jaxpr) -> int:
  return str(jaxpr).count(" gather[")


@pytest.mark.parametrize("impl", ["xla", "interpret"])
def test_mix8_column_cache_rebuilt_when_detecting_read_when_frozen(impl):
  rng = np.random.default_rng(4)
  calib = [3, 17]
  w, w_q, s_w, variables = _mix8_vars(rng, calib)
  model = Site(LayerQuant(scheme="mix8", capacity=C), impl)
  # A wrong cache on purpose: the detecting call must rebuild it from the new set, not read it ...
  variables = {**variables, OUTLIER_COLS: {"dense": {"w_o": jnp.full((N, C), 7.0, jnp.bfloat16)}}}
  x1 = _x(rng, hot=[(3, 30.0), (40, 25.0)])
  ref1 = _mix8_ref(x1, w, w_q, s_w, {3, 17, 40}, calib)
  # ... also when the caller does not let it store the rebuilt columns.
  y0, _ = model.apply(variables, jnp.asarray(x1, jnp.bfloat16), detect=True, mutable=["outliers"])
  np.testing.assert_allclose(np.asarray(y0, np.float32), ref1, rtol=2e-2, atol=2e-2 * np.abs(ref1).max())
  y1, st = model.apply(variables, jnp.asarray(x1, jnp.bfloat16), detect=True, mutable=["outliers", OUTLIER_COLS])
  np.testing.assert_allclose(np.asarray(y1, np.float32), ref1, rtol=2e-2, atol=2e-2 * np.abs(ref1).max())
  cols = np.asarray(st[OUTLIER_COLS]["dense"]["w_o"], np.float32)
  want = np.stack([w[:, 3], w[:, 17], w_q[:, 40] * s_w], axis=1)  # stored, stored, added (dequantized)
  np.testing.assert_array_equal(cols[:, :3], np.asarray(jnp.asarray(want, jnp.bfloat16), np.float32))
  variables = {**variables, **st}
  # Frozen: the cache is read (not rebuilt), so the program has one gather less than without it ...
  x2 = _x(rng, hot=[(7, 20.0), (40, 25.0)])
  y2, _ = model.apply(variables, jnp.asarray(x2, jnp.bfloat16), detect=False, mutable=["outliers"])
  ref2 = _mix8_ref(x2, w, w_q, s_w, {3, 17, 40}, calib)
  np.testing.assert_allclose(np.asarray(y2, np.float32), ref2, rtol=2e-2, atol=2e-2 * np.abs(ref2).max())
  no_cache = {k: v for k, v in variables.items() if k != OUTLIER_COLS}
  frozen = lambda v: jax.make_jaxpr(lambda v, x: model.apply(v, x, detect=False, mutable=["outliers"]))(  # noqa: E731
      v, jnp.asarray(x2, jnp.bfloat16))
  assert _gathers(frozen(variables)) == _gathers(frozen(no_cache)) - 1
  # ... and what it holds is what the layer uses.
  poisoned = {**variables, OUTLIER_COLS: {"dense": {"w_o": st[OUTLIER_COLS]["dense"]["w_o"].at[:, 2].set(0)}}}
  y3, _ = model.apply(poisoned, jnp.asarray(x2, jnp.bfloat16), detect=False, mutable=["outliers"])
  assert np.abs(np.asarray(y3, np.float32) - np.asarray(y2, np.float32)).max() > 1e-2 * np.abs(ref2).max()


@pytest.mark.parametrize("count", [0, 2, 5, C])
def test_outlier_weight_columns_gathers_only_added_slots(count):
  """Slots below calib_count take the stored 16-bit columns, slots [calib_count, count) the
  dequantized int8 ones; the gather reads column 0 for every other slot."""
  rng = np.random.default_rng(5)
  w, w_q, s_w = _weights(rng)
  idx = rng.permutation(K)[:C].astype(np.int32)
  calib = min(2, count)
  w_o = np.asarray(jnp.asarray(w[:, idx[:calib]], jnp.bfloat16))
  cols = np.asarray(outlier_weight_columns({"w_q": w_q, "s_w": s_w, "w_o": w_o}, jnp.asarray(idx),
                                           jnp.int32(count), jnp.int32(calib)), np.float32)
  deq = np.asarray(jnp.asarray(w_q[:, idx] * s_w[:, None], jnp.bfloat16), np.float32)
  np.testing.assert_array_equal(cols[:, :calib], np.asarray(w_o, np.float32))
  np.testing.assert_array_equal(cols[:, calib:count], deq[:, calib:count])
  col0 = np.asarray(jnp.asarray(w_q[:, :1] * s_w[:, None], jnp.bfloat16), np.float32)
  np.testing.assert_array_equal(cols[:, count:], np.broadcast_to(col0, (N, C - count)))
  # llm_int8 (no stored columns): every valid slot is dequantized.
  cols8 = np.asarray(outlier_weight_columns({"w_q": w_q, "s_w": s_w}, jnp.asarray(idx), jnp.int32(count),
                                            jnp.int32(0)), np.float32)
  np.testing.assert_array_equal(cols8[:, :count], deq[:, :count])


def test_mix8_capacity_is_a_hard_limit():
  rng = np.random.default_rng(3)
  _, _, _, variables = _mix8_vars(rng, [1, 2, 3, 4, 5, 6])
  model = Site(LayerQuant(scheme="mix8", capacity=C))
  x = _x(rng, hot=[(c, 10.0 + c) for c in (20, 21, 22, 23)])  # 4 new columns, 2 free slots
  _, st = model.apply(variables, jnp.asarray(x, jnp.bfloat16), detect=True, mutable=["outliers"])
  s = st["outliers"]["site"]
  assert int(s["count"]) == C
  assert list(np.asarray(s["idx"])) == [1, 2, 3, 4, 5, 6, 23, 22]  # the largest first
