"""Split-K partials summed inside the kernel by the last-arriving program (`_split_k.py`) against the
XLA sum after it and the references: every kernel family that splits K, ragged M, scales and bias."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixq_jax.pallas_kernels import (KernelConfig, mx, mx_matmul, mx_matmul_reference, w4a8_matmul,
                                     w4a8_matmul_reference, w4a16_matmul, w4a16_matmul_reference, w8a16_matmul,
                                     w8a16_matmul_reference)
from mixq_jax.pallas_kernels.int4_pack import quantize_w4_asym
from kernel_testutil import INTERPRET, keys, rand_int8, rand_scale, rel_err, w4a8_exact_case

# The module (the package re-exports the function of the same name over its attribute).
W8A8 = importlib.import_module("mixq_jax.pallas_kernels.w8a8_matmul")


def _cfg(split_k, block_k=128):
  return KernelConfig(block_m=16, block_n=16, block_k=block_k, num_warps=4, num_stages=2, split_k=split_k)


def _both(kernel_flag, call):
  """call() with the XLA sum, then with the in-kernel sum."""
  out = []
  for in_kernel in (False, True):
    kernel_flag(W8A8, "SPLIT_K_IN_KERNEL", in_kernel)
    out.append(np.asarray(call(), np.float32))
  return out


@pytest.mark.parametrize("m,split_k,bias", [(16, 4, False), (5, 2, True), (33, 8, True)])
def test_w8a16_in_kernel_sum(m, split_k, bias, kernel_flag):
  """Float partials: the in-kernel sum adds them in the same order as XLA's, so the outputs agree."""
  n, k = 48, 1024
  kx, kw, ks, kb = keys(4)
  x = jax.random.normal(kx, (m, k), jnp.bfloat16)
  w, s_w = rand_int8(kw, (n, k)), rand_scale(ks, (n,))
  b = jax.random.normal(kb, (n,), jnp.bfloat16) if bias else None
  call = lambda: w8a16_matmul(x, w, s_w, b, out_dtype=jnp.float32, interpret=INTERPRET, config=_cfg(split_k))
  xla_sum, in_kernel = _both(kernel_flag, call)
  want = w8a16_matmul_reference(x, w, s_w, b, out_dtype=jnp.float32)
  assert in_kernel.shape == (m, n)
  assert rel_err(in_kernel, want) < 1e-6
  np.testing.assert_allclose(in_kernel, xla_sum, rtol=1e-6, atol=1e-6 * np.abs(xla_sum).max())


@pytest.mark.parametrize("grouped,split_k", [(False, 2), (True, 4), (False, 8)])
def test_w4a8_in_kernel_sum_exact(grouped, split_k, kernel_flag):
  """int32 partials (5 pack blocks in uneven slices): the in-kernel sum is the exact accumulator."""
  x, w_q, s_g, ones_m, ones_n, want = w4a8_exact_case(7, 48, 576, grouped)
  call = lambda: w4a8_matmul(x, ones_m, w_q, ones_n, s_g=s_g, out_dtype=jnp.float32, interpret=INTERPRET,
                             config=_cfg(split_k))
  xla_sum, in_kernel = _both(kernel_flag, call)
  np.testing.assert_array_equal(in_kernel, np.asarray(want, np.float32))
  np.testing.assert_array_equal(in_kernel, xla_sum)


def test_w4a8_in_kernel_epilogue(kernel_flag):
  """s_x, s_w and the bias, applied by the last program after the int32 sum, ragged M."""
  from mixq_jax.pallas_kernels.int4_pack import quantize_w4_sym  # noqa: PLC0415
  m, n, k = 5, 64, 640
  kx, kw, ks, kb = keys(4)
  x, sx = rand_int8(kx, (m, k)), rand_scale(ks, (m,))
  w_q, s_w = quantize_w4_sym(jax.random.normal(kw, (n, k)))
  b = jax.random.normal(kb, (n,), jnp.bfloat16)
  kernel_flag(W8A8, "SPLIT_K_IN_KERNEL", True)
  got = w4a8_matmul(x, sx, w_q, s_w, b, out_dtype=jnp.float32, interpret=INTERPRET, config=_cfg(2))
  assert rel_err(got, w4a8_matmul_reference(x, sx, w_q, s_w, b, out_dtype=jnp.float32)) < 1e-6


@pytest.mark.parametrize("m,split_k", [(1, 4), (19, 2)])
def test_w4a16_in_kernel_sum(m, split_k, kernel_flag):
  n, k = 32, 576  # K = 4.5 groups: the last group is zero-padded
  kx, kw, kb = keys(3)
  x = jax.random.normal(kx, (m, k), jnp.bfloat16)
  w_q, s, z = quantize_w4_asym(jax.random.normal(kw, (n, k)))
  b = jax.random.normal(kb, (n,), jnp.bfloat16)
  call = lambda: w4a16_matmul(x, w_q, s, z, b, out_dtype=jnp.float32, interpret=INTERPRET, config=_cfg(split_k))
  xla_sum, in_kernel = _both(kernel_flag, call)
  assert rel_err(in_kernel, w4a16_matmul_reference(x, w_q, s, z, b, out_dtype=jnp.float32)) < 1e-5
  np.testing.assert_allclose(in_kernel, xla_sum, rtol=1e-6, atol=1e-6 * np.abs(xla_sum).max())


@pytest.mark.parametrize("k6,split_k", [(0, 4), (64, 2)])
def test_mx_in_kernel_sum(k6, split_k, kernel_flag):
  """MXFP4 slices, the MXFP6 blocks with the last slice, ragged M (the wrapper pads rows)."""
  m, n, k = 3, 32, 640
  kx, kw = keys(2)
  x_e, x_s = mx.mx_quantize_act(jax.random.normal(kx, (m, k), jnp.bfloat16), k6)
  wq = mx.mx_quantize_weight(jax.random.normal(kw, (n, k)), k6)
  call = lambda: mx_matmul(x_e, x_s, wq, out_dtype=jnp.float32, interpret=INTERPRET, config=_cfg(split_k))
  xla_sum, in_kernel = _both(kernel_flag, call)
  assert in_kernel.shape == (m, n)
  assert rel_err(in_kernel, mx_matmul_reference(x_e, x_s, wq, out_dtype=jnp.float32)) < 1e-6
  np.testing.assert_allclose(in_kernel, xla_sum, rtol=1e-6, atol=1e-6 * np.abs(xla_sum).max())


@pytest.mark.skipif(INTERPRET, reason="races only exist on a GPU")
def test_w8a16_in_kernel_sum_repeatable(kernel_flag):
  """Many calls with 4 programs per tile racing to finish: every output equals the first."""
  m, n, k = 16, 2048, 4096
  kx, kw, ks = keys(3)
  x = jax.random.normal(kx, (m, k), jnp.bfloat16)
  w, s_w = rand_int8(kw, (n, k)), rand_scale(ks, (n,))
  kernel_flag(W8A8, "SPLIT_K_IN_KERNEL", True)
  cfg = KernelConfig(block_m=16, block_n=64, block_k=256, num_warps=4, num_stages=3, split_k=4)
  first = np.asarray(w8a16_matmul(x, w, s_w, config=cfg))
  for _ in range(100):
    np.testing.assert_array_equal(np.asarray(w8a16_matmul(x, w, s_w, config=cfg)), first)
