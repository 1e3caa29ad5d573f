import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixq_jax.pallas_kernels import KernelConfig, _w4_common, w4a16_matmul, w4a16_matmul_reference
from mixq_jax.pallas_kernels.int4_pack import (dequantize_w4_asym, from_asym_storage_order, quantize_w4_asym,
                                               to_asym_storage_order)
from kernel_testutil import INTERPRET, keys, rel_err


@pytest.mark.parametrize("m,n,k,split_k,bias", [(1, 64, 256, 2, False), (7, 96, 576, 1, True),
                                                (33, 48, 320, 2, True)])
def test_w4a16(m, n, k, split_k, bias):
  kx, kw, kb = keys(3)
  x = jax.random.normal(kx, (m, k), jnp.bfloat16)
  w_q, s, z = quantize_w4_asym(jax.random.normal(kw, (n, k)))
  b = jax.random.normal(kb, (n,), jnp.bfloat16) if bias else None
  cfg = KernelConfig(block_m=16, block_n=32, block_k=256, num_warps=4, num_stages=2, group_m=2,
                     split_k=split_k)
  got = w4a16_matmul(x, w_q, s, z, b, out_dtype=jnp.float32, interpret=INTERPRET, config=cfg)
  want = w4a16_matmul_reference(x, w_q, s, z, b, out_dtype=jnp.float32)
  assert got.shape == (m, n)
  assert rel_err(got, want) < 1e-5
  # The reference is the dequantized product.
  deq = jnp.dot(x.astype(jnp.float32), dequantize_w4_asym(w_q, s, z, k).T, precision="highest")  # no TF32 on GPU
  deq = deq + (b.astype(jnp.float32) if bias else 0)
  assert rel_err(want, deq) < 1e-5


@pytest.mark.parametrize("magic", [True, False])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("split_k", [1, 2, 4])
def test_w4a16_int4_to_float(magic, dtype, split_k, kernel_flag):
  """The magic-number conversion (16 + q exact in 16 bits, the offset folded into the zero point, x
  permuted by the wrapper) and the byte unpack agree with the reference, with the row sums of x from
  an MMA in the kernel, also with uneven K slices (5 pack blocks)."""
  kernel_flag(_w4_common, "MAGIC", magic)
  kx, kw = keys(2)
  m, n, k = 3, 32, 576
  x = jax.random.normal(kx, (m, k), dtype)
  w_q, s, z = quantize_w4_asym(jax.random.normal(kw, (n, k)))
  cfg = KernelConfig(block_m=16, block_n=16, block_k=128, num_warps=4, num_stages=2, split_k=split_k)
  got = w4a16_matmul(x, w_q, s, z, out_dtype=jnp.float32, interpret=INTERPRET, config=cfg)
  want = w4a16_matmul_reference(x, w_q, s, z, out_dtype=jnp.float32)
  assert rel_err(got, want) < 2e-5


@pytest.mark.parametrize("group", [256, 512])
@pytest.mark.parametrize("magic,block_m", [(True, 16), (False, 16), (True, 64), (False, 64)])
def test_w4a16_groups_wider_than_a_pack_block(group, magic, block_m, kernel_flag):
  """Groups of 256 / 512 columns span several pack blocks: each block's correction uses that block's
  own row sums (a group-wide sum per block counted the zero point twice; regression)."""
  kernel_flag(_w4_common, "MAGIC", magic)
  kx, kw = keys(2)
  m, n, k = 5 if block_m == 16 else 66, 32, 1000
  x = jax.random.normal(kx, (m, k), jnp.bfloat16)
  w_q, s, z = quantize_w4_asym(jax.random.normal(kw, (n, k)), group=group)
  assert s.shape[0] == w_q.shape[1] * 2 // group
  cfg = KernelConfig(block_m=block_m, block_n=16, block_k=256, num_warps=4, num_stages=2, split_k=2)
  got = w4a16_matmul(x, w_q, s, z, out_dtype=jnp.float32, interpret=INTERPRET, config=cfg)
  want = jnp.dot(x.astype(jnp.float32), dequantize_w4_asym(w_q, s, z, k).T, precision="highest")
  assert rel_err(got, want) < (2e-5 if block_m == 16 else 1e-2)  # block_m 64 rounds W to bf16


def test_w4a16_storage_order_is_a_permutation_within_blocks():
  """to_asym_storage_order moves each column within its 128-block, a bijection that
  from_asym_storage_order undoes; position 64 a + 4 j + 2 h + e takes column 64 e + 32 a + 2 j + h."""
  x = jnp.arange(2 * 256, dtype=jnp.float32).reshape(2, 256)
  y = to_asym_storage_order(x)
  assert sorted(y[0].tolist()) == x[0].tolist()
  assert set(y[1, :128].tolist()) == set(x[1, :128].tolist())
  assert not (y == x).all()
  np.testing.assert_array_equal(np.asarray(from_asym_storage_order(y)), np.asarray(x))
  a, j, h, e = 1, 5, 1, 1
  assert float(y[0, 128 + 64 * a + 4 * j + 2 * h + e]) == 128 + 64 * e + 32 * a + 2 * j + h


def test_w4a16_default_config_bf16_out():
  kx, kw = keys(2)
  x = jax.random.normal(kx, (20, 256), jnp.bfloat16)
  w_q, s, z = quantize_w4_asym(jax.random.normal(kw, (128, 256)))
  got = w4a16_matmul(x, w_q, s, z, interpret=INTERPRET)
  assert got.dtype == jnp.bfloat16
  # on sm_90 M = 20 runs the Mosaic GPU kernel, which rounds W to bf16 before the bf16 output rounding
  assert rel_err(got, w4a16_matmul_reference(x, w_q, s, z)) < 8e-3


def test_w4a16_errors():
  w_q, s, z = quantize_w4_asym(jnp.ones((32, 256)))
  with pytest.raises(ValueError, match="K=384"):
    w4a16_matmul(jnp.ones((2, 384), jnp.bfloat16), w_q, s, z)
  with pytest.raises(ValueError, match="uint8"):
    w4a16_matmul(jnp.ones((2, 256), jnp.bfloat16), w_q.astype(jnp.int8), s, z)
  with pytest.raises(ValueError, match="K=100"):  # shorter than the K the weights came from
    w4a16_matmul(jnp.ones((2, 100), jnp.bfloat16), w_q, s, z)
  w_q, s, z = quantize_w4_asym(jnp.ones((32, 300)), group=256)  # Kp = 512
  assert w4a16_matmul_reference(jnp.ones((2, 300), jnp.bfloat16), w_q, s, z).shape == (2, 32)
  with pytest.raises(ValueError, match=r"K=250.*\(256, 512\]"):
    w4a16_matmul(jnp.ones((2, 250), jnp.bfloat16), w_q, s, z)


@pytest.mark.parametrize("magic_dequant", [True, False])
def test_w4a16_large_m_dequant_path(magic_dequant, kernel_flag):
  """block_m >= 64 dequantizes W to bf16 in registers (rounded like AWQ): close, not exact. Both
  forms: from the magic-number values against x as it is, and from the byte unpack against x reordered."""
  kernel_flag(_w4_common, "MAGIC_DEQUANT", magic_dequant)
  kx, kw = keys(2)
  m, n, k = 70, 64, 576
  x = jax.random.normal(kx, (m, k), jnp.bfloat16)
  w_q, s, z = quantize_w4_asym(jax.random.normal(kw, (n, k)))
  cfg = KernelConfig(block_m=64, block_n=32, block_k=128, num_warps=4, num_stages=2, group_m=2)
  got = w4a16_matmul(x, w_q, s, z, out_dtype=jnp.float32, interpret=INTERPRET, config=cfg)
  want = w4a16_matmul_reference(x, w_q, s, z, out_dtype=jnp.float32)
  assert 0 < rel_err(got, want) < 4e-3
