"""The Hopper W8A8O16 kernel whose outlier columns are extra pipeline steps: interpret mode on CPU,
natively on an sm_90 GPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernel_testutil import keys, mosaic_gpu_test_mode, rand_int8, rel_err, small_hopper_config, w8a8_operands
from mixq_jax.pallas_kernels import w8a8_matmul_reference, w8a8o16_matmul_reference
from mixq_jax.pallas_kernels.w8a8_matmul_hopper import HopperConfig, _fit_smem
from mixq_jax.pallas_kernels.w8a8o16_matmul_hopper import w8a8o16_matmul_hopper

INTERPRET = mosaic_gpu_test_mode()
SMALL = small_hopper_config()


def _outliers(m, n, c, count, dtype=jnp.bfloat16):
  ko, kp = keys(2)
  x_o = (4 * jax.random.normal(ko, (m, c))).astype(dtype)
  w_o = jax.random.normal(kp, (n, c)).astype(dtype).at[:, count:].set(jnp.nan)  # unused slots: NaN
  return x_o, w_o


@pytest.mark.parametrize("m,n,k,sms,tile_k,delay", [(64, 128, 128, 1, 128, 1), (100, 256, 384, 3, 128, 0),
                                                    (1, 128, 256, 2, 128, 0), (100, 128, 320, 2, 64, 1)])
def test_accumulator_bit_exact_without_outliers(m, n, k, sms, tile_k, delay):
  """No outliers: plain W8A8. Unit scales and float32 out expose the int32 accumulator, which must be
  exact, through several output tiles per SM (the pipeline runs on across tiles)."""
  kx, kw = keys(2)
  x, w = rand_int8(kx, (m, k)), rand_int8(kw, (n, k))
  cfg = HopperConfig(tile_m=64, tile_n=64, tile_k=tile_k, stages=2, grid_tile_width=2, delay_release=delay)
  got = w8a8o16_matmul_hopper(x, jnp.ones((m,), jnp.float32), w, jnp.ones((n,), jnp.float32),
                                    out_dtype=jnp.float32, config=cfg, interpret=INTERPRET, num_sms=sms)
  want = jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want, np.float32))


@pytest.mark.parametrize("m,k,c,count,stages,delay", [(100, 256, 128, 70, 2, 0), (64, 384, 128, 0, 3, 0),
                                                      (130, 256, 100, 100, 2, 1), (64, 128, 64, 64, 3, 1)])
def test_w8a8o16(m, k, c, count, stages, delay):
  """Outlier steps after the int8 steps, in the same stage buffers (stage counts that do and do not
  divide the steps per tile; int8 buffers released at once or a step late); slots past the count hold
  NaN and must not leak."""
  n = 256
  x, sx, w, sw = w8a8_operands(m, n, k)
  (kb,) = keys(1)
  x_o, w_o = _outliers(m, n, c, count)
  b = jax.random.normal(kb, (n,), jnp.bfloat16)
  cfg = HopperConfig(tile_m=64, tile_n=64, tile_k=128, stages=stages, grid_tile_width=2, delay_release=delay)
  cnt = jnp.int32(count)
  got = w8a8o16_matmul_hopper(x, sx, w, sw, x_o, w_o, cnt, b, config=cfg, interpret=INTERPRET, num_sms=3)
  want = w8a8o16_matmul_reference(x, sx, w, sw, x_o, w_o, cnt, b)
  assert got.shape == (m, n) and got.dtype == jnp.bfloat16
  assert rel_err(got, want) < 4e-3


def test_fp16_outliers_stay_fp16():
  """fp16 outlier operands run an fp16 wgmma (not rounded to bf16): float32 output within float32
  summation-order error of the reference."""
  m, n, k, c = 64, 128, 256, 64
  x, sx, w, sw = w8a8_operands(m, n, k)
  x_o, w_o = _outliers(m, n, c, 50, jnp.float16)
  cnt = jnp.int32(50)
  got = w8a8o16_matmul_hopper(x, sx, w, sw, x_o, w_o, cnt, out_dtype=jnp.float32, config=SMALL,
                              interpret=INTERPRET, num_sms=2)
  want = w8a8o16_matmul_reference(x, sx, w, sw, x_o, w_o, cnt, out_dtype=jnp.float32)
  assert rel_err(got, want) < 1e-5


def test_rank1_term():
  """QUIK's u[m] v[n] term joins the epilogue."""
  m, n, k, c = 64, 128, 256, 64
  x, sx, w, sw = w8a8_operands(m, n, k)
  ku, kv = keys(2)
  u, v = jax.random.normal(ku, (m,)), jax.random.normal(kv, (n,))
  x_o, w_o = _outliers(m, n, c, c)
  got = w8a8o16_matmul_hopper(x, sx, w, sw, x_o, w_o, jnp.int32(c), None, u, v, out_dtype=jnp.float32,
                                    config=SMALL, interpret=INTERPRET, num_sms=2)
  want = w8a8o16_matmul_reference(x, sx, w, sw, x_o, w_o, jnp.int32(c), out_dtype=jnp.float32) + u[:, None] * v[None]
  assert rel_err(got, want) < 1e-5


@pytest.mark.skipif(INTERPRET, reason="full-size tiles: native GPU only")
@pytest.mark.parametrize("m,n,k", [(4096, 4096, 4096), (1000, 11008, 4096), (2048, 4096, 11008)])
def test_default_config_native(m, n, k):
  x, sx, w, sw = w8a8_operands(m, n, k)
  got = w8a8o16_matmul_hopper(x, sx, w, sw, out_dtype=jnp.float32)
  assert rel_err(got, w8a8_matmul_reference(x, sx, w, sw, out_dtype=jnp.float32)) < 1e-6
  x_o, w_o = _outliers(m, n, 128, 100)
  cnt = jnp.int32(100)
  got = w8a8o16_matmul_hopper(x, sx, w, sw, x_o, w_o, cnt)
  assert rel_err(got, w8a8o16_matmul_reference(x, sx, w, sw, x_o, w_o, cnt)) < 4e-3


def test_stages_fit_shared_memory():
  """128 x 256 tiles keep 4 stages with bf16 output; a bias or the rank-1 vectors cost the fourth."""
  assert _fit_smem(HopperConfig(), 2, bias=False, rank1=False).stages == 4
  assert _fit_smem(HopperConfig(), 2, bias=True, rank1=False).stages == 3
  assert _fit_smem(HopperConfig(), 2, bias=False, rank1=True).stages == 3
  assert _fit_smem(HopperConfig(tile_m=512, tile_n=256, stages=4), 2, False, False) is None  # 2 stages: 256 KB


def test_errors():
  x, w = jnp.ones((8, 100), jnp.int8), jnp.ones((128, 100), jnp.int8)
  ones8, ones128 = jnp.ones((8,), jnp.float32), jnp.ones((128,), jnp.float32)
  with pytest.raises(ValueError, match="K=100"):
    w8a8o16_matmul_hopper(x, ones8, w, ones128, interpret=True)
  x, w = jnp.ones((8, 128), jnp.int8), jnp.ones((128, 128), jnp.int8)
  with pytest.raises(ValueError, match="x_o, w_o and outlier_count together"):
    w8a8o16_matmul_hopper(x, ones8, w, ones128, jnp.ones((8, 64), jnp.bfloat16), interpret=True)
  with pytest.raises(ValueError, match="delay_release=1 must be 0 or 1 and below stages=1"):
    w8a8o16_matmul_hopper(x, ones8, w, ones128, config=HopperConfig(stages=1, delay_release=1), interpret=True)
  with pytest.raises(ValueError, match="both u"):
    w8a8o16_matmul_hopper(x, ones8, w, ones128, u=ones8, interpret=True)
