import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixq_jax.pallas_kernels import (KernelConfig, w8a8_matmul, w8a8_matmul_reference,
                                     w8a8o16_matmul, w8a8o16_matmul_reference)
from kernel_testutil import INTERPRET, keys, rand_int8, rand_scale, rel_err

# Small blocks so that the small test shapes still have several tiles (and ragged edges).
SMALL = KernelConfig(block_m=16, block_n=32, block_k=32, num_warps=4, num_stages=2, group_m=2)


@pytest.mark.parametrize("m", [1, 7, 33, 130])
@pytest.mark.parametrize("n,k", [(48, 160), (96, 48)])
def test_w8a8_accumulator_bit_exact(m, n, k):
  """Scales of 1 and float32 out expose the int32 accumulator directly: must be bit-exact."""
  kx, kw = keys(2)
  x, w = rand_int8(kx, (m, k)), rand_int8(kw, (n, k))
  ones_m, ones_n = jnp.ones((m,), jnp.float32), jnp.ones((n,), jnp.float32)
  got = w8a8_matmul(x, ones_m, w, ones_n, out_dtype=jnp.float32, interpret=INTERPRET, config=SMALL)
  want = jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want, np.float32))


@pytest.mark.parametrize("m,n,k,bias", [(1, 64, 128, False), (33, 96, 160, True), (130, 48, 64, True)])
def test_w8a8_epilogue(m, n, k, bias):
  kx, kw, ks, kt, kb = keys(5)
  x, w = rand_int8(kx, (m, k)), rand_int8(kw, (n, k))
  sx, sw = rand_scale(ks, (m,)), rand_scale(kt, (n,))
  b = jax.random.normal(kb, (n,), jnp.bfloat16) if bias else None
  got = w8a8_matmul(x, sx, w, sw, b, interpret=INTERPRET, config=SMALL)
  want = w8a8_matmul_reference(x, sx, w, sw, b)
  assert got.dtype == jnp.bfloat16 and got.shape == (m, n)
  assert rel_err(got, want) < 4e-3


def test_w8a8_default_config():
  kx, kw, ks, kt = keys(4)
  m, n, k = 20, 128, 256
  x, w = rand_int8(kx, (m, k)), rand_int8(kw, (n, k))
  sx, sw = rand_scale(ks, (m,)), rand_scale(kt, (n,))
  got = w8a8_matmul(x, sx, w, sw, out_dtype=jnp.float32, interpret=INTERPRET)
  want = w8a8_matmul_reference(x, sx, w, sw, out_dtype=jnp.float32)
  assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize("m", [7, 130])
@pytest.mark.parametrize("count", [0, 5, 16])
def test_w8a8o16(m, count):
  n, k, c = 96, 160, 16
  kx, kw, ks, kt, ko, kp, kb = keys(7)
  x, w = rand_int8(kx, (m, k)), rand_int8(kw, (n, k))
  sx, sw = rand_scale(ks, (m,)), rand_scale(kt, (n,))
  x_o = (4 * jax.random.normal(ko, (m, c))).astype(jnp.bfloat16)
  w_o = jax.random.normal(kp, (n, c)).astype(jnp.bfloat16)
  # Capacity slots past count hold garbage (even NaN): they must be ignored.
  w_o = w_o.at[:, count:].set(jnp.nan) if count < c else w_o
  b = jax.random.normal(kb, (n,), jnp.bfloat16)
  got = w8a8o16_matmul(x, sx, w, sw, x_o, w_o, jnp.int32(count), b, interpret=INTERPRET,
                       config=SMALL)
  want = w8a8o16_matmul_reference(x, sx, w, sw, x_o, w_o, jnp.int32(count), b)
  assert rel_err(got, want) < 4e-3
  if count:  # the outlier product really contributes
    base = w8a8_matmul_reference(x, sx, w, sw, b)
    assert rel_err(base, want) > 1e-2


@pytest.mark.parametrize("m,count", [(7, 5), (33, 16)])
def test_w8a8o16_accumulator_bit_exact(m, count):
  """Unit scales, float32 out and small-integer outliers: the int32 product and the outlier product
  are both exact in float32, so the kernel must match to the bit."""
  n, k, c = 96, 160, 16
  kx, kw, ko, kp = keys(4)
  x, w = rand_int8(kx, (m, k)), rand_int8(kw, (n, k))
  x_o = jax.random.randint(ko, (m, c), -4, 5).astype(jnp.bfloat16)
  w_o = jax.random.randint(kp, (n, c), -4, 5).astype(jnp.bfloat16)
  w_o = w_o.at[:, count:].set(jnp.nan) if count < c else w_o
  ones_m, ones_n = jnp.ones((m,), jnp.float32), jnp.ones((n,), jnp.float32)
  got = w8a8o16_matmul(x, ones_m, w, ones_n, x_o, w_o, jnp.int32(count), out_dtype=jnp.float32,
                       interpret=INTERPRET, config=SMALL)
  acc = jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
  out = jax.lax.dot_general(x_o[:, :count].astype(jnp.int32), w_o[:, :count].astype(jnp.int32),
                            (((1,), (1,)), ((), ())))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(acc + out, np.float32))


def test_w8a8o16_odd_capacity():
  """C not a power of two is padded inside the wrapper."""
  m, n, k, c = 9, 64, 64, 12
  kx, kw, ks, kt, ko, kp = keys(6)
  x, w = rand_int8(kx, (m, k)), rand_int8(kw, (n, k))
  sx, sw = rand_scale(ks, (m,)), rand_scale(kt, (n,))
  x_o = jax.random.normal(ko, (m, c)).astype(jnp.bfloat16)
  w_o = jax.random.normal(kp, (n, c)).astype(jnp.bfloat16)
  got = w8a8o16_matmul(x, sx, w, sw, x_o, w_o, jnp.int32(c), interpret=INTERPRET, config=SMALL)
  want = w8a8o16_matmul_reference(x, sx, w, sw, x_o, w_o, jnp.int32(c))
  assert rel_err(got, want) < 4e-3


def test_errors():
  x = jnp.ones((4, 40), jnp.int8)
  w = jnp.ones((32, 40), jnp.int8)
  with pytest.raises(ValueError, match="K=40"):
    w8a8_matmul(x, jnp.ones((4,)), w, jnp.ones((32,)))
  with pytest.raises(ValueError, match="disagree on K"):
    w8a8_matmul(jnp.ones((4, 32), jnp.int8), jnp.ones((4,)), jnp.ones((32, 64), jnp.int8),
                jnp.ones((32,)))
  with pytest.raises(ValueError, match="M = 0"):
    w8a8_matmul(jnp.ones((0, 32), jnp.int8), jnp.ones((0,)), jnp.ones((32, 32), jnp.int8), jnp.ones((32,)))
  with pytest.raises(ValueError, match="x_q.dtype"):
    w8a8_matmul(jnp.ones((4, 32)), jnp.ones((4,)), jnp.ones((32, 32), jnp.int8), jnp.ones((32,)))
