import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixq_jax.pallas_kernels import KernelConfig, w4a8_matmul, w4a8_matmul_reference
from mixq_jax.pallas_kernels.int4_pack import quantize_w4_qqq_g128, quantize_w4_sym
from kernel_testutil import INTERPRET, keys, rand_int8, rand_scale, rel_err, w4a8_exact_case

SMALL = KernelConfig(block_m=16, block_n=32, block_k=256, num_warps=4, num_stages=2, group_m=2)
NT = (((1,), (1,)), ((), ()))


@pytest.mark.parametrize("m", [1, 33])
@pytest.mark.parametrize("grouped", [False, True])
def test_w4a8_accumulator_bit_exact(m, grouped):
  """Scales of 1 and float32 out expose the int32 accumulator: bit-exact vs an int8 matmul."""
  x, w_q, s_g, ones_m, ones_n, want = w4a8_exact_case(m, 48, 576, grouped)
  got = w4a8_matmul(x, ones_m, w_q, ones_n, s_g=s_g, out_dtype=jnp.float32, interpret=INTERPRET,
                    config=SMALL)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want, np.float32))


@pytest.mark.parametrize("grouped", [False, True])
def test_w4a8_epilogue(grouped):
  m, n, k = 7, 64, 256
  kx, kw, ks, kb = keys(4)
  x, sx = rand_int8(kx, (m, k)), rand_scale(ks, (m,))
  w = jax.random.normal(kw, (n, k))
  if grouped:
    w_q, s_g, s_w = quantize_w4_qqq_g128(w)
    s_g = s_g.T
  else:
    (w_q, s_w), s_g = quantize_w4_sym(w), None
  b = jax.random.normal(kb, (n,), jnp.bfloat16)
  got = w4a8_matmul(x, sx, w_q, s_w, b, s_g=s_g, interpret=INTERPRET, config=SMALL)
  want = w4a8_matmul_reference(x, sx, w_q, s_w, b, s_g=s_g)
  assert got.dtype == jnp.bfloat16 and rel_err(got, want) < 4e-3


def test_w4a8_errors():
  w_q, s_w = quantize_w4_sym(jnp.ones((32, 256)))
  x = jnp.ones((2, 256), jnp.int8)
  with pytest.raises(ValueError, match="s_g.shape"):
    w4a8_matmul(x, jnp.ones((2,)), w_q, s_w, s_g=jnp.ones((32, 3), jnp.int8))
  with pytest.raises(ValueError, match="K=512"):
    w4a8_matmul(jnp.ones((2, 512), jnp.int8), jnp.ones((2,)), w_q, s_w)
