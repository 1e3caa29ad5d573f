import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixq_jax.pallas_kernels import KernelConfig, w4a4o16_matmul, w4a4o16_matmul_reference
from mixq_jax.pallas_kernels.int4_pack import (pack_int4, quantize_act4, quantize_act4_outliers, quantize_w4_sym,
                                               row_sums, unpack_int4)
from kernel_testutil import INTERPRET, keys, rel_err

SMALL = KernelConfig(block_m=16, block_n=32, block_k=256, num_warps=4, num_stages=2, group_m=2)
NT = (((1,), (1,)), ((), ()))


@pytest.mark.parametrize("m", [1, 33])
@pytest.mark.parametrize("asym", [False, True])
def test_w4a4_accumulator_bit_exact(m, asym):
  n, k = 48, 256
  kx, kw = keys(2)
  lo, hi = (0, 16) if asym else (-8, 8)
  qx = jax.random.randint(kx, (m, k), lo, hi)
  qw = jax.random.randint(kw, (n, k), -8, 8)
  x_q, w_q = pack_int4(qx, signed=not asym), pack_int4(qw, signed=True)
  ones_m, ones_n = jnp.ones((m,), jnp.float32), jnp.ones((n,), jnp.float32)
  x_o, w_o = jnp.zeros((m, 0), jnp.bfloat16), jnp.zeros((n, 0), jnp.bfloat16)
  extra = dict(m_x=jnp.zeros((m,), jnp.float32), wsum=row_sums(w_q)) if asym else {}
  got = w4a4o16_matmul(x_q, ones_m, w_q, ones_n, x_o, w_o, jnp.int32(0), **extra,
                       out_dtype=jnp.float32, interpret=INTERPRET, config=SMALL)
  want = jax.lax.dot_general(qx.astype(jnp.int8), qw.astype(jnp.int8), NT,
                             preferred_element_type=jnp.int32)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want, np.float32))


@pytest.mark.parametrize("m,asym,count", [(7, False, 5), (33, True, 16), (130, False, 0)])
def test_w4a4o16(m, asym, count):
  n, k, c = 64, 320, 16
  kx, kw, ko, kp, kb = keys(5)
  x = jax.random.normal(kx, (m, k), jnp.bfloat16)
  w_q, s_w = quantize_w4_sym(jax.random.normal(kw, (n, k)))
  x_q, s_x, m_x = quantize_act4(x, asym=asym)
  wsum = row_sums(w_q) if asym else None
  x_o = (4 * jax.random.normal(ko, (m, c))).astype(jnp.bfloat16)
  w_o = jax.random.normal(kp, (n, c)).astype(jnp.bfloat16)
  w_o = w_o.at[:, count:].set(jnp.nan) if count < c else w_o  # slots past count: ignored
  b = jax.random.normal(kb, (n,), jnp.bfloat16)
  got = w4a4o16_matmul(x_q, s_x, w_q, s_w, x_o, w_o, jnp.int32(count), b, m_x=m_x, wsum=wsum,
                       interpret=INTERPRET, config=SMALL)
  want = w4a4o16_matmul_reference(x_q, s_x, w_q, s_w, x_o, w_o, jnp.int32(count), b, m_x=m_x,
                                  wsum=wsum)
  assert rel_err(got, want) < 4e-3
  if asym:  # QUIK's zero-point term really matters: x ~ s_x q + m_x
    xd = unpack_int4(x_q)[:, :k].astype(jnp.float32) * s_x[:, None] + m_x[:, None]
    wd = unpack_int4(w_q)[:, :k].astype(jnp.float32) * s_w[:, None]
    valid = jnp.arange(c) < count
    y = (xd @ wd.T + jnp.where(valid, x_o, 0).astype(jnp.float32)
         @ jnp.where(valid, w_o, 0).astype(jnp.float32).T + b.astype(jnp.float32))
    assert rel_err(want, y) < 4e-3


@pytest.mark.parametrize("asym,count", [(False, 5), (True, 5), (True, 0), (False, 8)])
def test_w4a4o16_end_to_end_outlier_split(asym, count):
  """quantize_act4_outliers -> w4a4o16_matmul on x with large outlier columns: every column is
  counted once (int4 for the others, 16-bit x_o w_o for the outliers), and the result matches the
  fake-quantized product; splitting the outliers off cuts the error against x W^T."""
  m, n, k, c = 9, 64, 320, 8
  kx, kw, ki = keys(3)
  idx = jax.random.permutation(ki, k)[:c].astype(jnp.int32)
  x = jax.random.normal(kx, (m, k), jnp.float32)
  x = x.at[:, idx[:count]].multiply(40.0).astype(jnp.bfloat16)  # MixQ's outlier channels
  w = jax.random.normal(kw, (n, k))
  w_q, s_w = quantize_w4_sym(w)
  x_q, s_x, m_x, x_o = quantize_act4_outliers(x, idx, jnp.int32(count), asym=asym)
  wsum = row_sums(w_q, idx, jnp.int32(count)) if asym else None
  w_o = w[:, idx].astype(jnp.bfloat16)
  got = w4a4o16_matmul(x_q, s_x, w_q, s_w, x_o, w_o, jnp.int32(count), m_x=m_x, wsum=wsum,
                       out_dtype=jnp.float32, interpret=INTERPRET, config=SMALL)
  is_out = jnp.zeros((k,), bool).at[idx[:count]].set(True)
  qx = unpack_int4(x_q)[:, :k].astype(jnp.float32)
  assert int(jnp.max(jnp.abs(jnp.where(is_out[None, :], qx, 0)))) == 0  # outlier columns are q = 0
  xd = jnp.where(is_out[None, :], 0.0, qx * s_x[:, None] + (m_x[:, None] if asym else 0.0))
  wd = unpack_int4(w_q)[:, :k].astype(jnp.float32) * s_w[:, None]
  want = (jnp.dot(xd, wd.T, precision="highest")
          + jnp.dot(x_o[:, :count].astype(jnp.float32), w_o[:, :count].astype(jnp.float32).T, precision="highest"))
  assert rel_err(got, want) < 1e-3
  exact = jnp.dot(x.astype(jnp.float32), w.T, precision="highest")
  if count:  # the split beats quantizing the outliers with the rest
    xq0, sx0, mx0 = quantize_act4(x, asym=asym)
    plain = w4a4o16_matmul(xq0, sx0, w_q, s_w, x_o[:, :0], w_o[:, :0], jnp.int32(0), m_x=mx0,
                           wsum=row_sums(w_q) if asym else None, out_dtype=jnp.float32, interpret=INTERPRET,
                           config=SMALL)
    assert rel_err(got, exact) < 0.5 * rel_err(plain, exact)


def test_quantize_act4_outliers_matches_plain_without_outliers():
  (kx,) = keys(1)
  x = jax.random.normal(kx, (5, 200), jnp.bfloat16)
  for asym in (False, True):
    a = quantize_act4(x, asym=asym)
    b = quantize_act4_outliers(x, jnp.arange(4, dtype=jnp.int32), jnp.int32(0), asym=asym)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    np.testing.assert_array_equal(np.asarray(b[3]), 0)


def test_w4a4o16_errors():
  w_q, s_w = quantize_w4_sym(jnp.ones((32, 256)))
  x_q, s_x, _ = quantize_act4(jnp.ones((2, 256), jnp.bfloat16), asym=True)
  xo, wo = jnp.ones((2, 4), jnp.bfloat16), jnp.ones((32, 4), jnp.bfloat16)
  with pytest.raises(ValueError, match="needs m_x and wsum"):
    w4a4o16_matmul(x_q, s_x, w_q, s_w, xo, wo, jnp.int32(4))
