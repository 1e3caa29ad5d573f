"""The Hopper (Mosaic GPU) W8A8 kernel: interpret mode on CPU, natively on an sm_90 GPU."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernel_testutil import keys, mosaic_gpu_test_mode, rand_int8, rand_scale, rel_err, small_hopper_config, w8a8_operands
from mixq_jax.pallas_kernels import (w8a8_matmul, w8a8_matmul_reference, w8a8o16_matmul,
                                     w8a8o16_matmul_reference)
from mixq_jax.pallas_kernels.w8a8_matmul_hopper import HopperConfig, w8a8_matmul_hopper

INTERPRET = mosaic_gpu_test_mode()
SMALL = small_hopper_config()


@pytest.mark.parametrize("m,n,k,sms,tile_k", [(64, 128, 128, 1, 128), (100, 256, 384, 3, 128), (1, 128, 256, 2, 128),
                                              (100, 128, 320, 2, 64)])
def test_accumulator_bit_exact(m, n, k, sms, tile_k):
  """Unit scales and float32 out expose the int32 accumulator: it must be exact."""
  kx, kw = keys(2)
  x, w = rand_int8(kx, (m, k)), rand_int8(kw, (n, k))
  cfg = HopperConfig(tile_m=64, tile_n=64, tile_k=tile_k, stages=2, grid_tile_width=2)
  got = w8a8_matmul_hopper(x, jnp.ones((m,), jnp.float32), w, jnp.ones((n,), jnp.float32),
                           out_dtype=jnp.float32, config=cfg, interpret=INTERPRET, num_sms=sms)
  want = jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want, np.float32))


@pytest.mark.parametrize("bias", [False, True])
def test_epilogue(bias):
  m, n, k = 130, 256, 256
  x, sx, w, sw = w8a8_operands(m, n, k)
  (kb,) = keys(1)
  b = jax.random.normal(kb, (n,), jnp.bfloat16) if bias else None
  got = w8a8_matmul_hopper(x, sx, w, sw, b, config=SMALL, interpret=INTERPRET, num_sms=4)
  want = w8a8_matmul_reference(x, sx, w, sw, b)
  assert got.dtype == jnp.bfloat16 and got.shape == (m, n)
  assert rel_err(got, want) < 4e-3


@pytest.mark.skipif(INTERPRET, reason="full-size tiles: native GPU only")
@pytest.mark.parametrize("m,n,k", [(4096, 4096, 4096), (1000, 11008, 4096), (2048, 4096, 11008)])
def test_default_config_native(m, n, k):
  x, sx, w, sw = w8a8_operands(m, n, k)
  got = w8a8_matmul_hopper(x, sx, w, sw, out_dtype=jnp.float32)
  want = w8a8_matmul_reference(x, sx, w, sw, out_dtype=jnp.float32)
  assert rel_err(got, want) < 1e-6


def test_errors():
  x, w = jnp.ones((8, 100), jnp.int8), jnp.ones((128, 100), jnp.int8)
  with pytest.raises(ValueError, match="K=100"):
    w8a8_matmul_hopper(x, jnp.ones((8,), jnp.float32), w, jnp.ones((128,), jnp.float32), interpret=True)
  with pytest.raises(ValueError, match="tile_k must be 64 or 128"):
    w8a8_matmul_hopper(x, jnp.ones((8,), jnp.float32), w, jnp.ones((128,), jnp.float32), interpret=True,
                       config=HopperConfig(tile_k=32))


@pytest.mark.skipif(INTERPRET, reason="dispatch to the Hopper kernels happens on sm_90 only")
def test_dispatch_native():
  """w8a8_matmul / w8a8o16_matmul route large M to these kernels on sm_90 and still match."""
  m, n, k, c = 2048, 4096, 4096, 128
  x, sx, w, sw = w8a8_operands(m, n, k)
  ko, kp = keys(2)
  x_o = jax.random.normal(ko, (m, c)).astype(jnp.bfloat16)
  w_o = jax.random.normal(kp, (n, c)).astype(jnp.bfloat16)
  hlo = jax.jit(w8a8_matmul).lower(x, sx, w, sw).as_text()
  assert "mosaic_gpu" in hlo
  assert rel_err(w8a8_matmul(x, sx, w, sw), w8a8_matmul_reference(x, sx, w, sw)) < 4e-3
  cnt = jnp.int32(100)
  assert rel_err(w8a8o16_matmul(x, sx, w, sw, x_o, w_o, cnt),
                 w8a8o16_matmul_reference(x, sx, w, sw, x_o, w_o, cnt)) < 4e-3


def test_dispatch_rule(monkeypatch):
  """Which problems w8a8_matmul / w8a8o16_matmul send to these kernels on an sm_90 device."""
  import importlib

  from mixq_jax.pallas_kernels import KernelConfig
  from mixq_jax.pallas_kernels.w8a8_matmul import hopper_config as rule

  # The module, not the package's re-exported function of the same name.
  hopper_mod = importlib.import_module("mixq_jax.pallas_kernels.w8a8_matmul_hopper")

  monkeypatch.setattr(hopper_mod, "is_hopper", lambda: True)
  monkeypatch.setattr(hopper_mod, "device_sm_count", lambda: 132)
  assert rule(4096, 4096, 4096, False, None) == HopperConfig()
  # W8A8O16's outlier columns are pipeline steps: the same tiles for any count
  assert rule(4096, 4096, 4096, False, None, outlier_columns=128) == HopperConfig()
  assert rule(4096, 4096, 4096, False, None, outlier_columns=256) == HopperConfig()
  assert rule(1000, 11008, 4096, False, None) is None  # under HOPPER_MIN_M: Triton
  assert rule(1024, 1024, 8192, False, None) is None  # 32 tiles for 132 SMs
  assert rule(4096, 4096, 4096, True, None) is None  # interpret mode
  assert rule(4096, 4096, 4096, False, KernelConfig()) is None  # explicit Triton config
  assert rule(4096, 4096 + 16, 4096, False, None) is None  # N not a multiple of 256
  # Shared memory fits 128 x 256 tiles with float32 output, bias and QUIK's rank-1 vectors at 3 stages
  assert rule(4096, 4096, 4096, False, None, outlier_columns=128, out_dtype=jnp.float32, bias=True,
              rank1=True) == HopperConfig()


def test_narrow_output_staging_keeps_three_stages():
  """Where a third pipeline stage is 1 KB short (the int4 kernel's staging, a bias and float32
  output), the output staging halves (epi_tile_n 32) instead; the result is unchanged (checked in
  interpret mode / natively)."""
  from mixq_jax.pallas_kernels.w8a8_matmul_hopper import _fit_smem

  fitted = _fit_smem(HopperConfig(), 4, True, w_int4=True)
  assert (fitted.stages, fitted.epi_tile_n) == (3, 32)
  assert _fit_smem(HopperConfig(), 2, True, w_int4=True) == HopperConfig(stages=3)  # bf16: the 3rd fits at 64
  kx, kw, ks, kt, kb = keys(5)
  x, w = rand_int8(kx, (100, 256)), rand_int8(kw, (256, 256))
  sx, sw = rand_scale(ks, (100,)), rand_scale(kt, (256,))
  b = jax.random.normal(kb, (256,), jnp.bfloat16)
  cfg = dataclasses.replace(SMALL, epi_tile_n=32)
  got = w8a8_matmul_hopper(x, sx, w, sw, b, out_dtype=jnp.float32, config=cfg, interpret=INTERPRET, num_sms=2)
  np.testing.assert_allclose(np.asarray(got), np.asarray(w8a8_matmul_reference(x, sx, w, sw, b, out_dtype=jnp.float32)),
                             rtol=1e-6, atol=1e-6)
