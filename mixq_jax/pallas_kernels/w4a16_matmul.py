"""W4A16 matmul (AWQ g128): int4 asymmetric weights, 16-bit activations.

Shape letters: M tokens, N output features, K input features, Kp = K padded to 128, G = Kp / group.

    W[n, k] = (q[n, k] - zero[g, n]) * scale[g, n],   g = k // group,  q in [0, 15]
    y = x @ W.T (+ bias)

Weights come from `int4_pack.quantize_w4_asym` (layout and padding there). x must have the K the
weights were quantized from (Kp is K padded to the group). Which program runs, and how it rounds:

* Decode (the Triton kernel with block_m < 64: M <= 16 on sm_90, and small M elsewhere): q is converted
  to 16-bit (exact) and per group acc += scale * (x.q - sum(x) * zero) on the float32 accumulator (see
  `_w4_common`), algebraically the dequantized product. q, zero and the products x * q are exact; the
  group partial sums, the zero correction and the scaling are float32. The reference does the same
  algebra in float32 HIGHEST, so the two differ only by float32 summation order before the final cast.
* Larger M: the Triton kernel with block_m >= 64, the sm_90 Mosaic GPU kernel (`w4a16_matmul_hopper`,
  from HOPPER_MIN_M tokens) and XLA's program (`xla_matmuls.w4a16_matmul_xla`) all form
  W = (q - zero) * scale rounded to x.dtype once (q - zero exact), as AWQ's CUDA kernels do, then a
  16-bit MMA with float32 accumulation. These differ from the reference by W's rounding, about 2^-9
  relative per weight for bf16 (the tests allow for it).
Tuned for decode (M <= 16, split-K), correct for any M; any K (padded), N a multiple of 16. On sm_90
from HOPPER_MIN_M tokens the wrapper runs the Mosaic GPU kernel `w4a16_matmul_hopper` (bf16 x, N a
multiple of 128), and above TRITON_MAX_M tokens otherwise XLA's dequantize-then-GEMM program (both faster
there).
"""

import functools

import jax
import jax.numpy as jnp

from mixq_jax.pallas_kernels import _shapes
from mixq_jax.pallas_kernels._w4_common import _Plan, check_packed_w, pad_x, w4_matmul
from mixq_jax.pallas_kernels.configs import KernelConfig
from mixq_jax.pallas_kernels.int4_pack import PACK_BLOCK, check_x_k, from_asym_storage_order, unpack_int4
from mixq_jax.pallas_kernels.w4a16_matmul_hopper import pick_config as hopper_config
from mixq_jax.pallas_kernels.w4a16_matmul_hopper import supported as hopper_supported
from mixq_jax.pallas_kernels.w4a16_matmul_hopper import W4A16HopperConfig, w4a16_matmul_hopper
from mixq_jax.pallas_kernels.w8a8_matmul_hopper import device_sm_count, on_hopper
from mixq_jax.pallas_kernels.xla_matmuls import w4a16_matmul_xla

_STATIC = ("out_dtype", "interpret", "config")

# On sm_90 (no explicit config) where the Mosaic GPU kernel below does not take the product (fp16 x, N not a
# multiple of 128), products of more than this many tokens run XLA's program: W dequantized
# to x.dtype by XLA, then its 16-bit GEMM (xla_matmuls.w4a16_matmul_xla; W rounded as this kernel's
# large-M path rounds it). H100, 2026-12-06 (BENCHMARKS.md, issue 8), us, this kernel against XLA's:
# M = 32: 30.3 / 36.9 (4096 x 4096), 61.3 / 145.9 (8192 x 8192); M = 64: 46.5 / 39.4, 93.6 / 146.7;
# M = 128: 80.8 / 43.8, 169.7 / 149.6; M = 2048: 317.6 / 143.6 (0.34x / 0.75x of bf16), 1260 / 574.
# From M = 65 on this kernel runs 128-row tiles, so M = 128's times hold there.
TRITON_MAX_M = 64
# From this many tokens on sm_90, bf16 products whose shape fits run the Mosaic GPU kernel
# (w4a16_matmul_hopper.py, config from its pick_config: K split at M <= 64) instead of the Triton kernel or
# XLA's program; None: never. Ratio to bf16, the kernel against the best of the others: H200, 2026-12-06
# 23:36 UTC: M = 16: 0.96-1.78x against Triton's 1.37-2.29x (so M <= 16 stays Triton); M = 32: 1.07-1.49x
# against 0.56-0.91x; M = 64: 1.02-1.25x against 0.52-0.54x. H100, 23:03 UTC: M = 128: 0.60x against 0.54x;
# M = 256: 0.78x against 0.39x (8192 x 8192); M = 512-4096: 0.76-0.91x against 0.49-0.81x.
HOPPER_MIN_M = 17


def hopper_route(m: int, n: int, kp: int, group: int, dtype) -> W4A16HopperConfig | None:
  """On sm_90 without an explicit config: the Mosaic GPU kernel's config for this product, or None where
  the Triton kernel (m <= TRITON_MAX_M) or XLA's program runs instead."""
  if HOPPER_MIN_M is None or m < HOPPER_MIN_M or dtype != jnp.bfloat16:
    return None
  cfg = hopper_config(m, n, kp, group, device_sm_count())
  return cfg if hopper_supported(n, kp, group, cfg) else None


def _check(x, w_q, scale, zero, bias):
  _shapes.check_2d("x", x, (jnp.bfloat16, jnp.float16))
  if w_q.dtype != jnp.uint8:
    raise ValueError(f"w_q.dtype={w_q.dtype}: asymmetric int4 weights are packed as uint8")
  n, kp = check_packed_w(w_q)
  g = scale.shape[0]
  if scale.shape != (g, n) or zero.shape != (g, n) or g == 0 or kp % g:
    raise ValueError(f"scale.shape={scale.shape}, zero.shape={zero.shape}; expected (G, {n}) "
                     f"with G dividing Kp={kp}")
  if (kp // g) % PACK_BLOCK:
    raise ValueError(f"group={kp // g} must be a multiple of {PACK_BLOCK}")
  check_x_k("x", x.shape, kp, kp // g)  # quantize_w4_asym pads K to the group
  m = x.shape[0]
  if bias is not None:
    _shapes.check_vec("bias", bias, n)
  return m, n, kp


@functools.partial(jax.jit, static_argnames=_STATIC)
def w4a16_matmul(
    x: jax.Array,      # [M, K] bf16 / fp16
    w_q: jax.Array,    # [N, Kp/2] uint8, int4_pack layout (asymmetric storage order)
    scale: jax.Array,  # [G, N] bf16 (or f32)
    zero: jax.Array,   # [G, N] bf16 (or f32), integer values in [0, 15]
    bias: jax.Array | None = None,  # [N]
    *,
    out_dtype=None,    # default: x.dtype
    interpret: bool = False,
    config: KernelConfig | None = None,
) -> jax.Array:  # [M, N]
  """Pallas int4 (asymmetric, grouped) weight x 16-bit activation GEMM; on sm_90 without an explicit
  config, the Mosaic GPU kernel where `hopper_route` gives one, else above TRITON_MAX_M XLA's program."""
  m, n, kp = _check(x, w_q, scale, zero, bias)
  if on_hopper(interpret, config):
    cfg = hopper_route(m, n, kp, kp // scale.shape[0], x.dtype)
    if cfg is not None:
      return w4a16_matmul_hopper(x, w_q, scale, zero, bias, out_dtype=out_dtype, config=cfg)
    if m > TRITON_MAX_M:
      return w4a16_matmul_xla(x, w_q, scale, zero, bias, out_dtype=out_dtype)
  plan = _Plan(xmode="f16", wmode="asym", has_sx=False, has_sw=False, has_zp=False,
               has_bias=bias is not None, has_outliers=False)
  return w4_matmul(pad_x(x, kp), w_q, plan=plan, kernel="w4a16", scale=scale, zero=zero,
                   bias=bias, out_dtype=out_dtype or x.dtype, interpret=interpret, config=config)


@functools.partial(jax.jit, static_argnames=_STATIC)
def w4a16_matmul_reference(x, w_q, scale, zero, bias=None, *, out_dtype=None, interpret=False,
                           config=None):
  """Plain-jnp w4a16_matmul: the same per-group algebra in float32 (HIGHEST precision)."""
  del interpret, config
  m, n, kp = _check(x, w_q, scale, zero, bias)
  g = scale.shape[0]
  xf = pad_x(x, kp).astype(jnp.float32).reshape(m, g, kp // g)  # [M, G, gs]
  q = from_asym_storage_order(unpack_int4(w_q)).astype(jnp.float32).reshape(n, g, kp // g)  # [N, G, gs]
  d = jnp.einsum("mgk,ngk->mgn", xf, q, precision=jax.lax.Precision.HIGHEST)
  d = d - jnp.sum(xf, axis=2)[:, :, None] * zero.astype(jnp.float32)[None]
  y = jnp.sum(d * scale.astype(jnp.float32)[None], axis=1)
  if bias is not None:
    y = y + bias.astype(jnp.float32)[None, :]
  return y.astype(out_dtype or x.dtype)
