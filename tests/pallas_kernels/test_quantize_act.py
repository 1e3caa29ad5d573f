import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixq_jax.pallas_kernels import (KernelConfig, outlier_flag, outlier_mask_from_idx,
                                     quantize_act, quantize_act_reference)
from mixq_jax.pallas_kernels.quantize_act import MAX_UNROLL, k_chunks, single_pass
from kernel_testutil import INTERPRET, keys

SMALL = KernelConfig(block_m=4, block_k=32, num_warps=4, num_stages=1)


def _inputs(m, k, c, count, dtype=jnp.bfloat16):
  kx, ki, kn, ko = keys(4)
  x = jax.random.normal(kx, (m, k), jnp.float32)
  idx = jax.random.permutation(ki, k)[:c].astype(jnp.int32)
  # Make the outlier columns real outliers, as MixQ sees them.
  x = x.at[:, idx[:count]].multiply(50.0).astype(dtype)
  if count < c:  # slots past count hold garbage indices: must be ignored
    idx = idx.at[count:].set(jax.random.randint(ko, (c - count,), -5, 3 * k))
  nw = (1.0 + 0.2 * jax.random.normal(kn, (k,))).astype(dtype)
  return x, idx, jnp.int32(count), nw


def _compare(got, want):
  q, qr = np.asarray(got.x_q, np.int32), np.asarray(want.x_q, np.int32)
  diff = np.abs(q - qr)
  # The GPU's float32 division/rsqrt may differ by an ulp from XLA's: allow rare +-1 at ties.
  assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
  np.testing.assert_allclose(np.asarray(got.s_x), np.asarray(want.s_x), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(got.x_outlier, np.float32),
                             np.asarray(want.x_outlier, np.float32), rtol=1e-2, atol=1e-2)
  if want.col_mask is not None:
    np.testing.assert_array_equal(np.asarray(got.col_mask), np.asarray(want.col_mask))


@pytest.mark.parametrize("m", [1, 7, 33, 130])
@pytest.mark.parametrize("count", [0, 5, 8])
def test_quantize_act(m, count):
  x, idx, cnt, _ = _inputs(m, 96, 8, count)
  kw = dict(threshold=2.5, detect_columns=True)
  got = quantize_act(x, idx, cnt, interpret=INTERPRET, config=SMALL, **kw)
  want = quantize_act_reference(x, idx, cnt, **kw)
  _compare(got, want)
  assert got.x_q.dtype == jnp.int8 and got.x_outlier.shape == (m, 8)
  # Outlier columns are zeroed in x_q and carried in 16 bit.
  assert np.all(np.asarray(got.x_q)[:, np.asarray(idx[:count])] == 0)
  np.testing.assert_array_equal(np.asarray(got.x_outlier[:, :count], np.float32),
                                np.asarray(x[:, idx[:count]], np.float32))
  assert np.all(np.asarray(got.x_outlier[:, count:], np.float32) == 0)


@pytest.mark.parametrize("m,count,given_mask", [(7, 3, False), (130, 16, True)])
def test_quantize_act_fused_rmsnorm(m, count, given_mask):
  x, idx, cnt, nw = _inputs(m, 160, 16, count)
  om = outlier_mask_from_idx(idx, cnt, 160) if given_mask else None
  got = quantize_act(x, idx, cnt, nw, om, detect_columns=True, interpret=INTERPRET, config=SMALL)
  want = quantize_act_reference(x, idx, cnt, nw, detect_columns=True)
  _compare(got, want)


@pytest.mark.parametrize("norm", [False, True])
def test_quantize_act_long_rows_loop_path(norm):
  """More than MAX_UNROLL K chunks: the two-pass fori_loop path."""
  x, idx, cnt, nw = _inputs(5, 320, 8, 6)
  nw = nw if norm else None
  cfg = KernelConfig(block_m=2, block_k=16, num_warps=4, num_stages=1)
  got = quantize_act(x, idx, cnt, nw, detect_columns=True, interpret=INTERPRET, config=cfg)
  want = quantize_act_reference(x, idx, cnt, nw, detect_columns=True)
  _compare(got, want)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_quantize_act_no_outliers_default_config(dtype):
  x, _, _, _ = _inputs(33, 256, 0, 0, dtype)
  idx = jnp.zeros((0,), jnp.int32)
  got = quantize_act(x, idx, jnp.int32(0), interpret=INTERPRET)
  want = quantize_act_reference(x, idx, jnp.int32(0))
  _compare(got, want)
  assert got.col_mask is None and got.x_outlier.shape == (33, 0)
  # Dequantized values are within half a step of the input.
  deq = np.asarray(got.x_q, np.float32) * np.asarray(got.s_x)[:, None]
  assert np.all(np.abs(deq - np.asarray(x, np.float32)) <= 0.5001 * np.asarray(got.s_x)[:, None])


@pytest.mark.parametrize("m,k,count,norm,bk", [(7, 96, 0, False, 32), (33, 160, 5, True, 32),
                                               (5, 320, 6, True, 16)])
def test_quantize_act_col_scale(m, k, count, norm, bk):
  """SmoothQuant's per-channel 1/s fused in float32 (unrolled and loop paths, with and without the norm)."""
  x, idx, cnt, nw = _inputs(m, k, 8, count)
  cs = jax.random.uniform(keys(1)[0], (k,), jnp.float32, 0.2, 5.0)
  nw = nw if norm else None
  cfg = KernelConfig(block_m=4, block_k=bk, num_warps=4, num_stages=1)
  got = quantize_act(x, idx, cnt, nw, col_scale=cs, detect_columns=True, interpret=INTERPRET, config=cfg)
  want = quantize_act_reference(x, idx, cnt, nw, col_scale=cs, detect_columns=True)
  _compare(got, want)
  if not norm:  # x * scale in float32, then quantized (with a norm the rms still comes from x alone)
    xs = np.asarray(x, np.float32) * np.asarray(cs)[None, :]
    plain = quantize_act_reference(jnp.asarray(xs), idx, cnt)
    np.testing.assert_array_equal(np.asarray(want.x_q), np.asarray(plain.x_q))
    np.testing.assert_allclose(np.asarray(want.s_x), np.asarray(plain.s_x), rtol=1e-6)
  with pytest.raises(ValueError, match="col_scale"):
    quantize_act_reference(x, idx, cnt, col_scale=cs[:-16])


def test_reference_pins_input_rounding():
  """The reference rounds its input to x's dtype with an op XLA keeps, so a producer fused into the
  same XLA computation cannot hand it excess precision that the kernel (reading x from memory) never sees."""
  x, idx, cnt, _ = _inputs(8, 64, 4, 4)
  hlo = jax.jit(lambda a: quantize_act_reference(a.astype(jnp.bfloat16), idx, cnt).x_q).lower(
      x.astype(jnp.float32)).as_text()
  assert "reduce_precision" in hlo
  f32 = quantize_act_reference(x.astype(jnp.float32), idx, cnt)  # float32 input: nothing to pin
  _compare(f32, quantize_act_reference(x, idx, cnt))


def test_outlier_flag():
  x, idx, cnt, _ = _inputs(16, 64, 8, 8)
  out = quantize_act_reference(x, idx, cnt, detect_columns=True, threshold=2.0)
  assert bool(outlier_flag(out.s_x, 2.0)) == bool(out.col_mask.any())
  assert not bool(outlier_flag(out.s_x, 1e3))


def test_errors():
  x = jnp.ones((4, 40), jnp.bfloat16)
  with pytest.raises(ValueError, match="K=40"):
    quantize_act(x, jnp.zeros((4,), jnp.int32), jnp.int32(0))
  with pytest.raises(ValueError, match="outlier_idx"):
    quantize_act(jnp.ones((4, 32), jnp.bfloat16), jnp.zeros((4,), jnp.float32), jnp.int32(0))


@pytest.mark.parametrize("k", [16, 80, 576, 688, 4096, 11008, 13824, 28672])
@pytest.mark.parametrize("block_k", [32, 512, 2048])
def test_k_chunks_tile_k_with_powers_of_two(k, block_k):
  chunks = k_chunks(k, block_k)
  assert chunks[0][0] == 0 and sum(s for _, s in chunks) == k
  for (a, sa), (b, _) in zip(chunks, chunks[1:]):
    assert a + sa == b
  assert all(s <= block_k and s & (s - 1) == 0 and a % s == 0 for a, s in chunks)
  bk = chunks[0][1]
  assert bk == min(block_k, 1 << (k.bit_length() - 1))
  n_main = sum(s == bk for _, s in chunks)
  assert [s for _, s in chunks[:n_main]] == [bk] * (k // bk)  # the loop part: equal chunks first
  tail = [s for _, s in chunks[n_main:]]
  assert tail == sorted(set(tail), reverse=True) and sum(tail) == k % bk  # then distinct, decreasing
  one = KernelConfig(block_k=block_k, num_stages=1)
  assert single_pass(k, one) == (len(chunks) <= MAX_UNROLL)
  assert not single_pass(k, KernelConfig(block_k=block_k, num_stages=1, passes=2))


@pytest.mark.parametrize("block_k,passes", [(128, 1), (128, 2), (32, 1)])  # 688 = 5 x 128 + 32 + 16;
@pytest.mark.parametrize("m", [1, 5])                                       # 21 x 32 + 16 is 22 chunks
def test_quantize_act_k_not_a_multiple_of_block_k(block_k, passes, m):
  x, idx, cnt, nw = _inputs(m, 688, 8, 6)
  cfg = KernelConfig(block_m=4, block_k=block_k, num_warps=4, num_stages=1, passes=passes)
  assert single_pass(688, cfg) == (block_k == 128 and passes == 1)
  got = quantize_act(x, idx, cnt, nw, detect_columns=True, interpret=INTERPRET, config=cfg)
  _compare(got, quantize_act_reference(x, idx, cnt, nw, detect_columns=True))


def test_kernel_config_rejects_bad_passes():
  with pytest.raises(ValueError, match="passes=3"):
    KernelConfig(passes=3)


def test_reference_takes_the_cached_mask():
  """The reference reads a passed outlier mask (no scatter in its program) and gives the same result."""
  kx, ki = keys(2)
  k, c, count = 256, 16, 11
  x = jax.random.normal(kx, (5, k), jnp.bfloat16) * 3
  idx = jax.random.permutation(ki, k)[:c].astype(jnp.int32)
  mask = outlier_mask_from_idx(idx, count, k)
  got = quantize_act_reference(x, idx, jnp.int32(count), outlier_mask=mask)
  want = quantize_act_reference(x, idx, jnp.int32(count))
  for a, b in zip(got[:3], want[:3]):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  text = str(jax.make_jaxpr(lambda x, m: quantize_act_reference(x, idx, jnp.int32(count), outlier_mask=m))(x, mask))
  assert "scatter" not in text
  with pytest.raises(ValueError, match="outlier_mask"):
    quantize_act_reference(x, idx, jnp.int32(count), outlier_mask=mask[:-16])
