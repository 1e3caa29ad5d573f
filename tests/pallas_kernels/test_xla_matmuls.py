"""XLA formulations of the 4-bit and MX GEMMs on the kernels' packed weights (xla_matmuls.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernel_testutil import keys, rand_int8, rand_scale, rel_err, w4a8_exact_case
from mixq_jax.pallas_kernels import (mx, mx_matmul_reference, w4a8_matmul_reference,
                                     w4a16_matmul_reference, xla_matmuls)
from mixq_jax.pallas_kernels.int4_pack import (quantize_w4_asym, quantize_w4_sym,
                                               unpack_int4)

NT = (((1,), (1,)), ((), ()))


@pytest.mark.parametrize("m", [1, 33])
@pytest.mark.parametrize("grouped", [False, True])
def test_w4a8_xla_accumulator_bit_exact(m, grouped):
  """Scales of 1 and float32 out expose the int32 accumulator; K = 576 has a partial pack block."""
  x, w_q, s_g, ones_m, ones_n, want = w4a8_exact_case(m, 48, 576, grouped)
  got = xla_matmuls.w4a8_matmul_xla(x, ones_m, w_q, ones_n, None, s_g, out_dtype=jnp.float32)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want, np.float32))


def test_w4a8_xla_epilogue_matches_reference():
  m, n, k = 5, 64, 384
  kx, kw, ks, kt, kb = keys(5)
  x, sx = rand_int8(kx, (m, k)), rand_scale(ks, (m,))
  w_q, s_w = quantize_w4_sym(jax.random.normal(kw, (n, k)))
  b = jax.random.normal(kb, (n,), jnp.bfloat16)
  got = xla_matmuls.w4a8_matmul_xla(x, sx, w_q, s_w, b, out_dtype=jnp.float32)
  np.testing.assert_allclose(np.asarray(got), np.asarray(w4a8_matmul_reference(x, sx, w_q, s_w, b,
                                                                               out_dtype=jnp.float32)),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("m,k", [(1, 256), (9, 576)])
def test_w4a16_xla(m, k):
  """W rounded to bf16 once (as AWQ's kernels do): within bf16 rounding of the float32 reference."""
  n = 64
  kx, kw, kb = keys(3)
  x = jax.random.normal(kx, (m, k), jnp.bfloat16)
  w_q, scale, zero = quantize_w4_asym(jax.random.normal(kw, (n, k)))
  b = jax.random.normal(kb, (n,), jnp.bfloat16)
  got = xla_matmuls.w4a16_matmul_xla(x, w_q, scale, zero, b, out_dtype=jnp.float32)
  want = w4a16_matmul_reference(x, w_q, scale, zero, b, out_dtype=jnp.float32)
  assert got.shape == (m, n)
  assert rel_err(got, want) < 4e-3


@pytest.mark.parametrize("m,k,k6", [(1, 256, 0), (7, 576, 64), (33, 320, 32)])
def test_mx_xla(m, k, k6):
  """Exact products (E8M0 scales applied in bf16), float32 summation order only."""
  kx, kw = keys(2)
  x = jax.random.normal(kx, (m, k), jnp.bfloat16)
  wq = mx.mx_quantize_weight(jax.random.normal(kw, (48, k)), k6)
  x_e, x_s = mx.mx_quantize_act(x, k6)
  got = xla_matmuls.mx_matmul_xla(x_e, x_s, wq, out_dtype=jnp.float32)
  assert rel_err(got, mx_matmul_reference(x_e, x_s, wq, out_dtype=jnp.float32)) < 1e-6


def test_permute_x_is_the_packed_column_order():
  """permute_x and int4_columns pair every activation column with its own weight column."""
  kx, kw = keys(2)
  x = jax.random.normal(kx, (3, 200))
  w_q, _ = quantize_w4_sym(jax.random.normal(kw, (16, 200)))
  kp = 2 * w_q.shape[1]
  ours = xla_matmuls.permute_x(x, kp) @ xla_matmuls.int4_columns(w_q).astype(jnp.float32).T
  want = jnp.pad(x, ((0, 0), (0, kp - 200))) @ unpack_int4(w_q).astype(jnp.float32).T
  np.testing.assert_allclose(np.asarray(ours), np.asarray(want), rtol=1e-5, atol=1e-4)
