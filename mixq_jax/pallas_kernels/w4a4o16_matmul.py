"""W4A4O16 matmul (MixQ 4-bit, QUIK): int4 activations and weights, 16-bit outlier columns.

Shape letters: M tokens, N output features, K input features, Kp = K padded to 128,
C outlier capacity.

    symmetric (MixQ-4):  y = (q_x @ q_w.T) * s_x[:, None] * s_w[None, :] + x_o @ w_o.T (+ bias)
    asymmetric (QUIK):   x ~ s_x q_x + m_x with q_x in [0, 15], so
                         y = (q_x @ q_w.T) * s_x s_w + m_x[:, None] * (s_w * wsum)[None, :]
                             + x_o @ w_o.T (+ bias),   wsum[n] = sum_k q_w[n, k] (int32)

Hopper has no int4 tensor cores: both operands stay packed in memory (`int4_pack` layout; x from
`int4_pack.quantize_act4_outliers`, weights from `quantize_w4_sym`) and are unpacked to int8 in registers
for the int8 MMA. The int32 accumulator is exact; the outlier product is a 16-bit MMA with
float32 accumulation fused in the same output tile, as in `w8a8o16_matmul`. Outlier slots at
positions >= outlier_count are ignored (may hold garbage). With the symmetric form the int4 weight
keeps every column (the outlier columns of x_q are 0); with the asymmetric form wsum must leave the
outlier columns out (`int4_pack.row_sums(w_q, idx, count)`), since q = 0 decodes to m_x there.
"""

import functools

import jax
import jax.numpy as jnp

from mixq_jax.pallas_kernels import _shapes, w4_hopper
from mixq_jax.pallas_kernels._w4_common import _Plan, check_packed_w, w4_matmul
from mixq_jax.pallas_kernels.configs import KernelConfig
from mixq_jax.pallas_kernels.int4_pack import unpack_int4
from mixq_jax.pallas_kernels.w8a8_matmul import (_NT, _check_outliers, dequant_epilogue, hopper_config,
                                                 outlier_product_reference)
from mixq_jax.pallas_kernels.w8a8_matmul_hopper import on_hopper

_STATIC = ("out_dtype", "interpret", "config")


def _check(x_q, s_x, w_q, s_w, m_x, wsum, bias):
  _shapes.check_2d("x_q", x_q, (jnp.int8, jnp.uint8))
  if w_q.dtype != jnp.int8:
    raise ValueError(f"w_q.dtype={w_q.dtype}: symmetric int4 weights are packed as int8")
  n, kp = check_packed_w(w_q)
  m, kh = x_q.shape
  if 2 * kh != kp:
    raise ValueError(f"x_q.shape={x_q.shape} (packed) and w_q.shape={w_q.shape} disagree on K")
  asym = x_q.dtype == jnp.uint8
  if asym != (m_x is not None) or (m_x is not None) != (wsum is not None):
    raise ValueError(f"asymmetric (uint8) x_q needs m_x and wsum, symmetric (int8) neither: "
                     f"x_q.dtype={x_q.dtype}, m_x given: {m_x is not None}, "
                     f"wsum given: {wsum is not None}")
  _shapes.check_vec("s_x", s_x, m, jnp.float32)
  _shapes.check_vec("s_w", s_w, n, jnp.float32)
  if asym:
    _shapes.check_vec("m_x", m_x, m, jnp.float32)
    _shapes.check_vec("wsum", wsum, n, jnp.int32)
  if bias is not None:
    _shapes.check_vec("bias", bias, n)
  return m, n, kp


@functools.partial(jax.jit, static_argnames=_STATIC)
def w4a4o16_matmul(
    x_q: jax.Array,  # [M, Kp/2] packed int4: int8 = symmetric, uint8 = asymmetric (QUIK)
    s_x: jax.Array,  # [M] float32
    w_q: jax.Array,  # [N, Kp/2] int8 packed int4 (signed)
    s_w: jax.Array,  # [N] float32
    x_o: jax.Array,  # [M, C] bf16/fp16 outlier activations
    w_o: jax.Array,  # [N, C] bf16/fp16 outlier weight columns
    outlier_count: jax.Array,  # [] int32
    bias: jax.Array | None = None,  # [N]
    m_x: jax.Array | None = None,   # [M] float32 zero offset (asymmetric only)
    wsum: jax.Array | None = None,  # [N] int32 sum_k q_w (asymmetric only; int4_pack.row_sums)
    *,
    out_dtype=jnp.bfloat16,
    interpret: bool = False,
    config: KernelConfig | None = None,
) -> jax.Array:  # [M, N] out_dtype
  """Pallas W4A4 GEMM (int8 MMA on unpacked int4) with the fused 16-bit outlier product.

  On sm_90 (no explicit config), from M = 1024 both operands are unpacked to int8 for the Mosaic GPU
  W8A8O16 kernel (w4_hopper.py)."""
  m, n, kp = _check(x_q, s_x, w_q, s_w, m_x, wsum, bias)
  c = _check_outliers(x_o, w_o, outlier_count, m, n)
  if on_hopper(interpret, config):
    hcfg = hopper_config(m, n, kp, interpret, config, outlier_columns=c, out_dtype=out_dtype,
                         bias=bias is not None, rank1=m_x is not None)
    if hcfg is not None and c > 0:
      return w4_hopper.w4a4o16(x_q, s_x, w_q, s_w, x_o, w_o, outlier_count, bias, m_x, wsum,
                               out_dtype=out_dtype, config=hcfg)
  plan = _Plan(xmode="packed", wmode="sym", has_sx=True, has_sw=True, has_zp=m_x is not None,
               has_bias=bias is not None, has_outliers=c > 0)
  return w4_matmul(x_q, w_q, plan=plan, kernel="w4a4o16", s_x=s_x, m_x=m_x, s_w=s_w, wsum=wsum,
                   bias=bias, x_o=x_o, w_o=w_o, count=outlier_count, out_dtype=out_dtype,
                   interpret=interpret, config=config)


@functools.partial(jax.jit, static_argnames=_STATIC)
def w4a4o16_matmul_reference(x_q, s_x, w_q, s_w, x_o, w_o, outlier_count, bias=None, m_x=None,
                             wsum=None, *, out_dtype=jnp.bfloat16, interpret=False, config=None):
  """Plain-jnp w4a4o16_matmul (exact int32 accumulate, same float32 epilogue order)."""
  del interpret, config
  m, n, _ = _check(x_q, s_x, w_q, s_w, m_x, wsum, bias)
  _check_outliers(x_o, w_o, outlier_count, m, n)
  acc = jax.lax.dot_general(unpack_int4(x_q), unpack_int4(w_q), _NT,
                            preferred_element_type=jnp.int32)
  extra = [outlier_product_reference(x_o, w_o, outlier_count)]
  if m_x is not None:  # QUIK's zero-point term
    extra.insert(0, m_x[:, None] * (s_w * wsum.astype(jnp.float32))[None, :])
  return dequant_epilogue(acc, s_x, s_w, bias, out_dtype, extra)
