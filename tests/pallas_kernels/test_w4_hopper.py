"""Large-M 4-bit GEMMs on the Mosaic GPU 8-bit kernels (w4_hopper.py), and the 4-bit / MX dispatch.

The kernels run in Mosaic GPU interpret mode on the CPU and natively on an sm_90 GPU."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernel_testutil import keys, mosaic_gpu_test_mode, rand_int8, rand_scale, rel_err, small_hopper_config, w4a8_exact_case
from mixq_jax.pallas_kernels import (mx, mx_matmul, w4a4o16_matmul_reference, w4a8_matmul,
                                     w4a8_matmul_reference, w4a16_matmul, w4a16_matmul_reference, w4_hopper)
from mixq_jax.pallas_kernels.int4_pack import (pad_k, quantize_act4, quantize_w4_asym, quantize_w4_sym,
                                               row_sums)
from mixq_jax.pallas_kernels.w8a8_matmul_hopper import HopperConfig, w4a8_matmul_hopper

INTERPRET = mosaic_gpu_test_mode()
SMALL = small_hopper_config()
NT = (((1,), (1,)), ((), ()))


@pytest.mark.parametrize("grouped", [False, True])
def test_w4a8_bit_exact(grouped):
  """Scales of 1, float32 out: the int32 accumulator matches an int8 matmul exactly (K = 320, padded)."""
  x, w_q, s_g, ones_m, ones_n, want = w4a8_exact_case(70, 128, 320, grouped)
  kp = 2 * w_q.shape[1]
  got = w4_hopper.w4a8(pad_k(x, kp), ones_m, w_q, ones_n, None, s_g, out_dtype=jnp.float32, config=SMALL,
                       interpret=INTERPRET, num_sms=3)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want, np.float32))


@pytest.mark.parametrize("m,k,sms", [(70, 320, 3), (1, 128, 2), (130, 512, 4)])
def test_w4a8_packed_weights_bit_exact(m, k, sms):
  """w4a8_matmul_hopper streams the packed int4 weight and unpacks it in shared memory: the int32
  accumulator is exact (unit scales, float32 out), with K steps through both staging slots."""
  x, w_q, _, ones_m, ones_n, want = w4a8_exact_case(m, 256, k, False)
  kp = 2 * w_q.shape[1]
  got = w4a8_matmul_hopper(pad_k(x, kp), ones_m, w_q, ones_n, out_dtype=jnp.float32, config=SMALL,
                           interpret=INTERPRET, num_sms=sms)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want, np.float32))


def test_w4a8_packed_weights_epilogue_and_errors():
  m, n, k = 100, 256, 256
  kx, kw, ks, kb = keys(4)
  x = rand_int8(kx, (m, k))
  w_q, s_w = quantize_w4_sym(jax.random.normal(kw, (n, k)))
  s_x = rand_scale(ks, (m,))
  b = jax.random.normal(kb, (n,), jnp.bfloat16)
  got = w4a8_matmul_hopper(x, s_x, w_q, s_w, b, config=SMALL, interpret=INTERPRET, num_sms=2)
  want = w4a8_matmul_reference(x, s_x, w_q, s_w, b)
  assert got.dtype == jnp.bfloat16 and rel_err(got, want) < 4e-3
  with pytest.raises(ValueError, match="tile_k must be 128"):
    w4a8_matmul_hopper(x, s_x, w_q, s_w, config=HopperConfig(tile_k=64), interpret=True)
  with pytest.raises(ValueError, match="twice"):
    w4a8_matmul_hopper(x[:, :128], s_x, w_q, s_w, interpret=True)


@pytest.mark.parametrize("m,grouped,fused", [(1024, False, True), (2048, False, False), (1024, True, False)])
def test_w4a8_fused_below_fused_max_m(m, grouped, fused, monkeypatch):
  """Per-channel w4a8 below FUSED_MAX_M streams the packed weights (w4a8_matmul_hopper); from there,
  and for g128 at any M, XLA unpacks them for the W8A8 kernel."""
  calls = []
  monkeypatch.setattr(w4_hopper._hopper, "w4a8_matmul_hopper", lambda *a, **k: calls.append("fused"))
  monkeypatch.setattr(w4_hopper._hopper, "w8a8_matmul_hopper", lambda *a, **k: calls.append("w8a8"))
  k = 256
  x, w_q, s_g, ones_m, ones_n, _ = w4a8_exact_case(m, 128, k, grouped)
  w4_hopper.w4a8(x, ones_m, w_q, ones_n, None, s_g, out_dtype=jnp.float32, config=SMALL)
  assert calls == ["fused" if fused else "w8a8"]


@pytest.mark.parametrize("asym", [False, True])
def test_w4a4o16(asym):
  m, n, k, c = 100, 128, 256, 128
  kx, kw, ko, kp, kb = keys(5)
  x = jax.random.normal(kx, (m, k), jnp.bfloat16)
  x_q, s_x, m_x = quantize_act4(x, asym=asym)
  w_q, s_w = quantize_w4_sym(jax.random.normal(kw, (n, k)))
  wsum = row_sums(w_q) if asym else None
  x_o = (4 * jax.random.normal(ko, (m, c))).astype(jnp.bfloat16)
  w_o = jax.random.normal(kp, (n, c)).astype(jnp.bfloat16).at[:, 90:].set(jnp.nan)  # past the count
  b = jax.random.normal(kb, (n,), jnp.bfloat16)
  cnt = jnp.int32(90)
  got = w4_hopper.w4a4o16(x_q, s_x, w_q, s_w, x_o, w_o, cnt, b, m_x, wsum,
                          out_dtype=jnp.float32, config=SMALL, interpret=INTERPRET, num_sms=3)
  want = w4a4o16_matmul_reference(x_q, s_x, w_q, s_w, x_o, w_o, cnt, b, m_x, wsum,
                                  out_dtype=jnp.float32)
  assert rel_err(got, want) < 1e-5


def test_dispatch(monkeypatch):
  """On sm_90: w4a8 (per-channel and g128) runs the Triton kernel below M = 1024 and the Mosaic GPU
  kernel from there, mx from M = 256 XLA's program, w4a16 above M = 16 its Mosaic GPU kernel; elsewhere the Triton
  kernels (checked on the lowered program, so it runs on the CPU too)."""
  hopper_mod = importlib.import_module("mixq_jax.pallas_kernels.w8a8_matmul_hopper")
  monkeypatch.setattr(hopper_mod, "is_hopper", lambda: True)
  monkeypatch.setattr(hopper_mod, "device_sm_count", lambda: 132)
  kx, kw, ks, kt = keys(4)
  n, k = 4096, 256  # 8 x 16 output tiles at M = 1024: enough for 132 SMs
  w_q, s_w = quantize_w4_sym(jax.random.normal(kw, (n, k)))

  def lowered(f, *args):
    return jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",)).as_text()

  def w4a8_at(m, s_g=None):
    x, sx = rand_int8(kx, (m, k)), rand_scale(ks, (m,))
    return lowered(lambda *a: w4a8_matmul(*a, s_g=s_g), x, sx, w_q, s_w)

  one, mid, big = w4a8_at(1), w4a8_at(64), w4a8_at(1024)
  one_g = w4a8_at(1, jnp.ones((n, k // 128), jnp.int8))
  assert "triton" in one_g and "mosaic_gpu" not in one_g
  assert "triton" in one and "mosaic_gpu" not in one
  assert "triton" in mid and "mosaic_gpu" not in mid  # the Pallas Triton kernel
  assert "mosaic_gpu" in big
  wq = mx.mx_quantize_weight(jax.random.normal(kw, (n, k)))
  for m, backend in ((64, "triton"), (256, None)):
    x_e, x_s = mx.mx_quantize_act(jax.random.normal(kt, (m, k), jnp.bfloat16))
    text = lowered(lambda *a: mx_matmul(*a), x_e, x_s, wq)
    assert (backend in text) if backend else ("triton" not in text and "mosaic_gpu" not in text)
  wa, sa, za = quantize_w4_asym(jax.random.normal(kw, (n, k)))
  for m, backend in ((1, "triton"), (16, "triton"), (17, "mosaic_gpu"), (64, "mosaic_gpu"), (1024, "mosaic_gpu")):
    x = jax.random.normal(kt, (m, k), jnp.bfloat16)
    text = lowered(lambda *a: w4a16_matmul(*a), x, wa, sa, za)
    assert (backend in text) if backend else ("triton" not in text and "mosaic_gpu" not in text)


def test_w4a16_xla_above_triton_max_m(monkeypatch):
  """On sm_90, w4a16 above TRITON_MAX_M tokens is XLA's dequantize-then-GEMM program: it agrees with the
  reference (W rounded to bf16, as the kernel's large-M path rounds it), with a bias and ragged K."""
  hopper_mod = importlib.import_module("mixq_jax.pallas_kernels.w8a8_matmul_hopper")
  monkeypatch.setattr(hopper_mod, "is_hopper", lambda: True)
  kx, kw, kb = keys(3)
  m, n, k = 70, 48, 576
  x = jax.random.normal(kx, (m, k), jnp.bfloat16)
  w_q, s, z = quantize_w4_asym(jax.random.normal(kw, (n, k)))
  b = jax.random.normal(kb, (n,), jnp.bfloat16)
  got = w4a16_matmul(x, w_q, s, z, b, out_dtype=jnp.float32)
  want = w4a16_matmul_reference(x, w_q, s, z, b, out_dtype=jnp.float32)
  assert 0 < rel_err(got, want) < 4e-3


def test_rank1_needs_both_vectors():
  from mixq_jax.pallas_kernels.w8a8o16_matmul_hopper import w8a8o16_matmul_hopper  # noqa: PLC0415

  x, w = jnp.ones((64, 128), jnp.int8), jnp.ones((128, 128), jnp.int8)
  s = jnp.ones((64,), jnp.float32)
  o = jnp.ones((64, 64), jnp.bfloat16)
  with pytest.raises(ValueError, match="rank-1"):
    w8a8o16_matmul_hopper(x, s, w, jnp.ones((128,), jnp.float32), o, jnp.ones((128, 64), jnp.bfloat16),
                          jnp.int32(1), u=s, interpret=True)
