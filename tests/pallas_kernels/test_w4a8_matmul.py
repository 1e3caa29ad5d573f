import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixq_jax.pallas_kernels import KernelConfig, _w4_common, w4a8_matmul, w4a8_matmul_reference
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


@pytest.mark.parametrize("word_unpack", [True, False])
@pytest.mark.parametrize("grouped,split_k,block_k", [(False, 2, 128), (False, 4, 128), (True, 2, 128),
                                                     (False, 2, 256), (False, 8, 128)])
def test_w4a8_split_k_exact(word_unpack, grouped, split_k, block_k, kernel_flag):
  """K slices (5 pack blocks, one per step, in 2 or 4 uneven slices, or 8 -> 5) write int32 partials;
  their sum is still the exact accumulator, with and without the word-wise unpack."""
  kernel_flag(_w4_common, "WORD_UNPACK", word_unpack)
  x, w_q, s_g, ones_m, ones_n, want = w4a8_exact_case(7, 48, 576, grouped)
  cfg = KernelConfig(block_m=16, block_n=16, block_k=block_k, num_warps=4, num_stages=2, split_k=split_k)
  got = w4a8_matmul(x, ones_m, w_q, ones_n, s_g=s_g, out_dtype=jnp.float32, interpret=INTERPRET,
                    config=cfg)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want, np.float32))


def test_w4a8_g128_every_code_and_group_scale():
  """Every int4 code q in [-8, 7] meets every group scale s_g in [1, 15]: the word-wise q s_g
  (u s_g + 128 - 8 s_g per byte, then XOR 0x80) is the exact int8 product."""
  from mixq_jax.pallas_kernels.int4_pack import pack_int4  # noqa: PLC0415
  n, k = 16 * 15, 256
  q = jnp.tile(jnp.arange(-8, 8, dtype=jnp.int32), (n, k // 16))  # [N, K]: all codes in every row
  s_g = jnp.stack([jnp.arange(n) % 15 + 1, 15 - jnp.arange(n) % 15], axis=1).astype(jnp.int8)  # [N, 2]
  w_q = pack_int4(q, signed=True)
  x = rand_int8(keys(1)[0], (3, k))
  w8 = (q.reshape(n, 2, 128) * s_g[:, :, None].astype(jnp.int32)).reshape(n, k)
  want = jax.lax.dot_general(x.astype(jnp.int32), w8, NT, preferred_element_type=jnp.int32)
  ones_m, ones_n = jnp.ones((3,), jnp.float32), jnp.ones((n,), jnp.float32)
  got = w4a8_matmul(x, ones_m, w_q, ones_n, s_g=s_g, out_dtype=jnp.float32, interpret=INTERPRET,
                    config=SMALL)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want, np.float32))


def test_w4a8_split_k_epilogue():
  """With K slices the wrapper applies s_x, s_w and the bias after the sum."""
  m, n, k = 5, 64, 640
  kx, kw, ks, kb = keys(4)
  x, sx = rand_int8(kx, (m, k)), rand_scale(ks, (m,))
  (w_q, s_w) = quantize_w4_sym(jax.random.normal(kw, (n, k)))
  b = jax.random.normal(kb, (n,), jnp.bfloat16)
  cfg = KernelConfig(block_m=16, block_n=32, block_k=128, num_warps=4, num_stages=2, split_k=2)
  got = w4a8_matmul(x, sx, w_q, s_w, b, out_dtype=jnp.float32, interpret=INTERPRET, config=cfg)
  want = w4a8_matmul_reference(x, sx, w_q, s_w, b, out_dtype=jnp.float32)
  assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize("grouped", [False, True])
def test_w4a8_epilogue(grouped):
  m, n, k = 7, 64, 256
  kx, kw, ks, kb = keys(4)
  x, sx = rand_int8(kx, (m, k)), rand_scale(ks, (m,))
  w = jax.random.normal(kw, (n, k))
  if grouped:
    w_q, s_g, s_w = quantize_w4_qqq_g128(w)
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
  with pytest.raises(ValueError, match="K=100"):
    w4a8_matmul(jnp.ones((2, 100), jnp.int8), jnp.ones((2,)), w_q, s_w)
