"""XLA formulations of the int4-weight and MX GEMMs, on the same packed weights as the Pallas kernels.

Shape letters: M tokens, N output features, K input features, Kp = K padded to 128, G = Kp / 128.

Why: at decode sizes the GEMM is a weight stream, and XLA fuses an int4 -> 8/16-bit convert (and the
group dequant) into its own GEMM, reading the packed nibbles once. These functions let the wrappers
(and bench/gemm4.py) put that program next to the Pallas kernels; `w4a16_matmul_xla`,
`w4a8_matmul_xla` and `mx_matmul_xla` compute the same functions as `w4a16_matmul`, `w4a8_matmul`
and `mx_matmul`.

The weight bytes are reinterpreted, not repacked: `lax.bitcast_convert_type` reads byte j of a row
as (low nibble, high nibble) = logical columns (2j, 2j + 1) of an int4 [N, Kp] array. In the
`int4_pack` split-halves layout, byte j of pack block b holds k = 128 b + j (low) and
k = 128 b + 64 + j (high), so the activation is permuted the same way instead:

    x_perm[:, 128 b + 2 j + h] = x[:, 128 b + 64 h + j]      (h = 0 low, 1 high; 0 <= j < 64)

The permutation stays inside each 128-column block, so group scales (g128) are untouched.

Exact vs rounded: w4a8 is integer up to the float32 epilogue (bit-exact with the reference's int32
accumulator). w4a16 forms W = (q - zero) * scale in the activation dtype (rounded, as AWQ's CUDA
kernels do) and accumulates in float32 (XLA's default precision for 16-bit operands). mx decodes
E2M1 / E4M3 elements with XLA's float4_e2m1fn / float8 converts and applies the E8M0 scales in bf16
(exact, as the Pallas bf16 path does); only the float32 accumulation rounds.
"""

import functools

import jax
import jax.numpy as jnp

from mixq_jax.pallas_kernels.int4_pack import HALF, PACK_BLOCK, from_asym_storage_order, unpack_int4
from mixq_jax.pallas_kernels.mx import BLOCK, MXWeights
from mixq_jax.pallas_kernels.w8a8_matmul import _NT, dequant_epilogue

_STATIC = ("out_dtype",)


def permute_x(x: jax.Array, kp: int) -> jax.Array:
  """x [M, K] -> [M, Kp]: zero-padded to Kp, columns in the nibble order of the packed weights."""
  m, k = x.shape
  if k < kp:
    x = jnp.pad(x, ((0, 0), (0, kp - k)))
  return x.reshape(m, kp // PACK_BLOCK, 2, HALF).transpose(0, 1, 3, 2).reshape(m, kp)


def int4_columns(w_q: jax.Array) -> jax.Array:
  """Packed [N, Kp/2] int8 (signed) / uint8 (unsigned) -> int4 / uint4 [N, Kp] in nibble order."""
  n, kh = w_q.shape
  dt = jnp.int4 if w_q.dtype == jnp.int8 else jnp.uint4
  return jax.lax.bitcast_convert_type(w_q, dt).reshape(n, 2 * kh)


@functools.partial(jax.jit, static_argnames=_STATIC)
def w4a8_matmul_xla(x_q, s_x, w_q, s_w, bias=None, s_g=None, *, out_dtype=jnp.bfloat16):
  """QQQ W4A8 (per-channel, or g128 with s_g [N, G] int8): int4 -> int8 convert fused by XLA into
  its int8 dot; arguments as `w4a8_matmul`."""
  n, kh = w_q.shape
  kp = 2 * kh
  w8 = int4_columns(w_q).astype(jnp.int8)  # [N, Kp]
  if s_g is not None:
    w8 = (w8.reshape(n, kp // PACK_BLOCK, PACK_BLOCK) * s_g[:, :, None]).reshape(n, kp)
  acc = jax.lax.dot_general(permute_x(x_q, kp), w8, _NT, preferred_element_type=jnp.int32)  # [M, N]
  return dequant_epilogue(acc, s_x, s_w, bias, out_dtype)


@functools.partial(jax.jit, static_argnames=_STATIC)
def w4a16_matmul_xla(x, w_q, scale, zero, bias=None, *, out_dtype=None):
  """AWQ W4A16 g128: W = (q - zero) * scale in x.dtype, then XLA's 16-bit dot; arguments as
  `w4a16_matmul`."""
  n, kh = w_q.shape
  kp = 2 * kh
  g = scale.shape[0]
  # W is formed in logical column order (its unpack is fused into the dequant), so x is read as it is:
  # 0.80x against 0.69x of bf16 with x permuted instead (H100, M = 2048, 4096 x 4096; BENCHMARKS.md)
  q = from_asym_storage_order(unpack_int4(w_q)).astype(x.dtype).reshape(n, g, kp // g)  # [N, G, gs]
  w = ((q - zero.T.astype(x.dtype)[:, :, None]) * scale.T.astype(x.dtype)[:, :, None]).reshape(n, kp)
  xp = jnp.pad(x, ((0, 0), (0, kp - x.shape[1])))
  y = jax.lax.dot_general(xp, w, _NT, preferred_element_type=jnp.float32)
  if bias is not None:
    y = y + bias.astype(jnp.float32)[None, :]
  return y.astype(out_dtype or x.dtype)


def _e8m0(s: jax.Array) -> jax.Array:
  """E8M0 codes uint8 -> 2^(s - 127) in bf16 (exact; code 0 is a bf16 subnormal, 2^-127)."""
  return jax.lax.bitcast_convert_type(s, jnp.float8_e8m0fnu).astype(jnp.bfloat16)


def _nibble_order_scales(s4: jax.Array) -> jax.Array:
  """Per-32 scales [R, K4p/32] (logical K order) -> [R, K4p] expanded in nibble order (see top)."""
  r, nb = s4.shape
  # nibble position 128 b + 2 j + h has logical k = 128 b + 64 h + j, scale block 4 b + 2 h + j // 32
  s = s4.reshape(r, nb // 4, 2, 2).transpose(0, 1, 3, 2)  # [R, B, j // 32, h]
  return jnp.broadcast_to(s[:, :, :, None, :], (r, nb // 4, 2, BLOCK, 2)).reshape(r, nb * BLOCK)


@functools.partial(jax.jit, static_argnames=_STATIC)
def mx_matmul_xla(x_e, x_s, w: MXWeights, *, out_dtype=jnp.bfloat16):
  """MXFP8 x MXFP4 (+ MXFP6) with XLA's dtype converts; arguments as `mx_matmul`."""
  n, k4h = w.w4.shape
  k4p = 2 * k4h
  m = x_e.shape[0]
  xs = jnp.broadcast_to(_e8m0(x_s)[:, :, None], (m, x_s.shape[1], BLOCK)).reshape(m, -1)
  x = x_e.astype(jnp.bfloat16) * xs  # [M, Kt] exact
  w4 = jax.lax.bitcast_convert_type(w.w4, jnp.float4_e2m1fn).reshape(n, k4p)  # nibble order
  w4 = w4.astype(jnp.bfloat16) * _nibble_order_scales(_e8m0(w.s4))
  y = jax.lax.dot_general(permute_x(x[:, :k4p], k4p), w4, _NT, preferred_element_type=jnp.float32)
  if w.w6 is not None:
    k6p = w.w6.shape[1]
    w6 = w.w6.astype(jnp.bfloat16) * jnp.broadcast_to(
        _e8m0(w.s6)[:, :, None], (n, k6p // BLOCK, BLOCK)).reshape(n, k6p)
    y = y + jax.lax.dot_general(x[:, k4p:], w6, _NT, preferred_element_type=jnp.float32)
  return y.astype(out_dtype)
