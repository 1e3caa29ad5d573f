"""W4A8 matmul (QQQ): int4 symmetric weights, int8 per-token activations, int8 MMA.

Shape letters: M tokens, N output features, K input features, Kp = K padded to 128, G = Kp / 128.

    per-channel: y = (x_q @ q4.T) * s_x[:, None] * s_w[None, :] (+ bias)
    g128:        y = (x_q @ (q4 * s_g).T) * s_x[:, None] * s_ch[None, :] (+ bias)

q4 in [-8, 7] (packed, `int4_pack` layout) is sign-extended to int8 in registers; in the g128
variant it is multiplied by the integer group scale s_g in [1, 15] (QQQ's second level), giving
an exact int8 in [-120, 105]. The int8 x int8 MMA accumulates exactly in int32 (bit-exact with the
reference); only the float32 epilogue rounds. x_q, s_x come from `quantize_act` (int8 per token);
x_q may have K columns (the kernel pads it to Kp with zeros).
"""

import functools

import jax
import jax.numpy as jnp

from mixq_jax.pallas_kernels import _shapes, w4_hopper
from mixq_jax.pallas_kernels._w4_common import _Plan, check_packed_w, pad_x, w4_matmul
from mixq_jax.pallas_kernels.configs import KernelConfig
from mixq_jax.pallas_kernels.int4_pack import PACK_BLOCK, check_x_k, unpack_int4
from mixq_jax.pallas_kernels.w8a8_matmul import _NT, dequant_epilogue, hopper_config
from mixq_jax.pallas_kernels.w8a8_matmul_hopper import on_hopper

_STATIC = ("out_dtype", "interpret", "config")

# XLA's int8 dot with the int4 -> int8 convert fused (xla_matmuls.w4a8_matmul_xla) is never chosen:
# with the word-wise unpacks this kernel beats it at M = 1 as well, per-channel 49.3 against 118.2 us
# (8192 x 28672) and 7.6 against 8.9 (4096 x 4096), g128 8.3 against 11.9 (4096 x 4096) (H100,
# 2026-12-06; BENCHMARKS.md, issue 8).


def _check(x_q, s_x, w_q, s_w, bias, s_g=None):
  _shapes.check_2d("x_q", x_q, (jnp.int8,))
  if w_q.dtype != jnp.int8:
    raise ValueError(f"w_q.dtype={w_q.dtype}: symmetric int4 weights are packed as int8")
  n, kp = check_packed_w(w_q)
  m = x_q.shape[0]
  check_x_k("x_q", x_q.shape, kp)
  _shapes.check_vec("s_x", s_x, m, jnp.float32)
  _shapes.check_vec("s_w", s_w, n, jnp.float32)
  if s_g is not None and (s_g.shape != (n, kp // PACK_BLOCK) or s_g.dtype != jnp.int8):
    raise ValueError(f"s_g.shape={s_g.shape} dtype={s_g.dtype}; expected ({n}, "
                     f"{kp // PACK_BLOCK}) int8 (one group scale per 128 columns)")
  if bias is not None:
    _shapes.check_vec("bias", bias, n)
  return m, n, kp


@functools.partial(jax.jit, static_argnames=_STATIC)
def w4a8_matmul(
    x_q: jax.Array,  # [M, K] int8 per-token
    s_x: jax.Array,  # [M] float32
    w_q: jax.Array,  # [N, Kp/2] int8 packed int4 (signed)
    s_w: jax.Array,  # [N] float32 per-channel (s_ch in the g128 variant)
    bias: jax.Array | None = None,  # [N]
    s_g: jax.Array | None = None,   # [N, G] int8 in [1, 15]: g128 variant (QQQ two-level)
    *,
    out_dtype=jnp.bfloat16,
    interpret: bool = False,
    config: KernelConfig | None = None,
) -> jax.Array:  # [M, N] out_dtype
  """Pallas QQQ GEMM: int4 weights -> exact int8 in registers, int8 MMA, int32 accumulate.

  On sm_90 (no explicit config), from M = 1024 the Mosaic GPU kernels take over (w4_hopper.py):
  per-channel below M = 2048 streams the packed weights and unpacks them in shared memory, otherwise
  XLA unpacks them to int8 for the W8A8 kernel."""
  m, n, kp = _check(x_q, s_x, w_q, s_w, bias, s_g)
  if on_hopper(interpret, config):
    hcfg = hopper_config(m, n, kp, interpret, config, out_dtype=out_dtype, bias=bias is not None)
    if hcfg is not None:
      return w4_hopper.w4a8(pad_x(x_q, kp, "x_q"), s_x, w_q, s_w, bias, s_g, out_dtype=out_dtype, config=hcfg)
  plan = _Plan(xmode="int8", wmode="qqq" if s_g is not None else "sym", has_sx=True, has_sw=True,
               has_zp=False, has_bias=bias is not None, has_outliers=False)
  return w4_matmul(pad_x(x_q, kp, "x_q"), w_q, plan=plan,
                   kernel="w4a8g" if s_g is not None else "w4a8", s_x=s_x, s_g=s_g, s_w=s_w,
                   bias=bias, out_dtype=out_dtype, interpret=interpret, config=config)


@functools.partial(jax.jit, static_argnames=_STATIC)
def w4a8_matmul_reference(x_q, s_x, w_q, s_w, bias=None, s_g=None, *, out_dtype=jnp.bfloat16,
                          interpret=False, config=None):
  """Plain-jnp w4a8_matmul (exact int32 accumulate, same float32 epilogue order)."""
  del interpret, config
  m, n, kp = _check(x_q, s_x, w_q, s_w, bias, s_g)
  w8 = unpack_int4(w_q)  # [N, Kp] int8
  if s_g is not None:
    w8 = (w8.reshape(n, -1, PACK_BLOCK) * s_g[:, :, None]).reshape(n, kp)
  acc = jax.lax.dot_general(pad_x(x_q, kp, "x_q"), w8, _NT, preferred_element_type=jnp.int32)
  return dequant_epilogue(acc, s_x, s_w, bias, out_dtype)
