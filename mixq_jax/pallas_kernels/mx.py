"""OCP Microscaling (MX) formats: MXFP4 (E2M1), MXFP6 (E3M2), MXFP8 (E4M3), E8M0 block scales.

Shape letters: R rows (tokens or output features), K columns, Kb = K padded to BLOCK (32),
K4 the leading MXFP4 columns and K6 the trailing MXFP6 columns of a mixed weight (MXQuant /
MicroMix reorder the channels so that the sensitive ones come last).

Per block of BLOCK = 32 consecutive values along K:

    scale exponent  e = ceil(log2(amax / elem_max))   (the smallest e with amax <= elem_max * 2^e;
                         computed exactly with integer exponent arithmetic, clamped to [-127, 127];
                         an all-zero block gets e = -127). E8M0 code = e + 127; a block holding a NaN
                         or an Inf gets code 255 (NaN), so it decodes to NaN, not to finite values.
    element         v = x / 2^e  (exact: a power-of-two scaling), rounded to the element format
                         with round-to-nearest-even, subnormals kept, clamped to +-elem_max.

`scale_rule="ocp"` instead uses the OCP v1.0 spec text, e = floor(log2(amax)) - emax_elem, which
can saturate the largest values of a block to elem_max; "ceil" (the default, DESIGN.md) never
clamps more than rounding does. Both are bit-exact implementations of their definitions; the
tests cross-check every element code against ml_dtypes' float4_e2m1fn / float6_e3m2fn /
float8_e4m3fn casts.

| fmt | bits | exp bias | elem_max | emax_elem | min subnormal |
| fp4 | E2M1 | 1        | 6        | 2         | 0.5           |
| fp6 | E3M2 | 3        | 28       | 4         | 2^-4          |
| fp8 | E4M3 | 7        | 448      | 8         | 2^-9          |

Storage for the kernels (`mx_matmul`): MXFP4 codes are packed two per byte in the int4 layout of
`int4_pack` (uint8); MXFP6 elements are stored one per byte *as float8_e4m3fn* (every E3M2 value is
exactly representable in E4M3), which feeds the FP8 tensor cores directly but does not save the
2 bits per element of a packed 6-bit layout; MXFP8 elements are float8_e4m3fn. Scales are uint8
E8M0 codes [R, Kb / 32].
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mixq_jax.pallas_kernels.int4_pack import PACK_BLOCK, pack_int4, pad_k, padded_k, unpack_int4

BLOCK = 32
E8M0_BIAS = 127


@dataclasses.dataclass(frozen=True, kw_only=True)
class MXFormat:
  name: str
  ebits: int
  mbits: int
  bias: int
  elem_max: float
  emax_elem: int  # exponent of elem_max (OCP scale rule)

  @property
  def emin(self) -> int:  # exponent of the smallest normal
    return 1 - self.bias


FORMATS = {
    "fp4": MXFormat(name="fp4", ebits=2, mbits=1, bias=1, elem_max=6.0, emax_elem=2),
    "fp6": MXFormat(name="fp6", ebits=3, mbits=2, bias=3, elem_max=28.0, emax_elem=4),
    "fp8": MXFormat(name="fp8", ebits=4, mbits=3, bias=7, elem_max=448.0, emax_elem=8),
}


def _fmt(fmt) -> MXFormat:
  if isinstance(fmt, MXFormat):
    return fmt
  if fmt not in FORMATS:
    raise ValueError(f"unknown MX format {fmt=}; expected one of {list(FORMATS)}")
  return FORMATS[fmt]


def _floor_log2(a):
  """Exact floor(log2(a)) for a > 0 (float32), via the binary exponent."""
  _, e = jnp.frexp(a)  # a = f * 2^e, f in [0.5, 1)
  return e - 1


def round_to_format(v: jax.Array, fmt) -> jax.Array:
  """float32 v -> nearest element value (RNE, subnormals, clamp to +-elem_max), as float32."""
  f = _fmt(fmt)
  a = jnp.abs(v)
  e = jnp.maximum(_floor_log2(jnp.where(a > 0, a, 1.0)), f.emin)
  quantum = jnp.ldexp(jnp.ones_like(a), e - f.mbits)
  r = jnp.round(a / quantum) * quantum  # a / quantum is exact (power of two); jnp.round is RNE
  r = jnp.minimum(r, f.elem_max)
  return jnp.where(v < 0, -r, r)


def values_to_codes(r: jax.Array, fmt) -> jax.Array:
  """Exactly representable element values (float32) -> uint8 codes (sign | exponent | mantissa)."""
  f = _fmt(fmt)
  a = jnp.abs(r)
  sub = a < 2.0**f.emin
  e = jnp.maximum(_floor_log2(jnp.where(a > 0, a, 1.0)), f.emin)
  mant = jnp.where(sub, jnp.ldexp(a, f.mbits - f.emin),
                   jnp.ldexp(a, f.mbits - e) - 2**f.mbits).astype(jnp.int32)
  expf = jnp.where(sub, 0, e + f.bias).astype(jnp.int32)
  sign = jnp.signbit(r).astype(jnp.int32)
  return ((sign << (f.ebits + f.mbits)) | (expf << f.mbits) | mant).astype(jnp.uint8)


def codes_to_values(c: jax.Array, fmt) -> jax.Array:
  """uint8 codes -> element values, float32 (exact)."""
  f = _fmt(fmt)
  c = c.astype(jnp.int32)
  mant = c & ((1 << f.mbits) - 1)
  expf = (c >> f.mbits) & ((1 << f.ebits) - 1)
  sign = (c >> (f.ebits + f.mbits)) & 1
  mag = jnp.where(expf == 0, jnp.ldexp(mant.astype(jnp.float32), f.emin - f.mbits),
                  jnp.ldexp((mant + (1 << f.mbits)).astype(jnp.float32), expf - f.bias - f.mbits))
  return jnp.where(sign == 1, -mag, mag)


def scale_exponents(amax: jax.Array, fmt, scale_rule: str = "ceil") -> jax.Array:
  """Block amax (float32) -> int32 scale exponent e in [-127, 127]."""
  f = _fmt(fmt)
  pos = amax > 0
  safe = jnp.where(pos, amax, 1.0)
  if scale_rule == "ocp":
    e = _floor_log2(safe) - f.emax_elem
  elif scale_rule == "ceil":
    # floor(log2(amax)) - floor(log2(elem_max)) is within one of the answer; fix with exact tests.
    e = _floor_log2(safe) - f.emax_elem
    e = jnp.where(jnp.ldexp(jnp.full_like(safe, f.elem_max), e) < safe, e + 1, e)
    e = jnp.where(jnp.ldexp(jnp.full_like(safe, f.elem_max), e - 1) >= safe, e - 1, e)
  else:
    raise ValueError(f"{scale_rule=} must be 'ceil' or 'ocp'")
  return jnp.clip(jnp.where(pos, e, -E8M0_BIAS), -E8M0_BIAS, E8M0_BIAS).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("fmt", "scale_rule"))
def mx_encode(x: jax.Array, fmt, scale_rule: str = "ceil"):
  """x [..., K] -> (codes uint8 [..., Kb], scales uint8 E8M0 [..., Kb / 32]); K zero padded."""
  f = _fmt(fmt)
  k = x.shape[-1]
  kb = padded_k(k, BLOCK)
  xf = pad_k(x.astype(jnp.float32), kb)
  xb = xf.reshape(*xf.shape[:-1], kb // BLOCK, BLOCK)
  amax = jnp.max(jnp.abs(xb), axis=-1)  # [..., Kb/32]
  bad = ~jnp.isfinite(amax)  # a NaN or Inf in the block
  e = scale_exponents(jnp.where(bad, 0.0, amax), f, scale_rule)
  r = round_to_format(jnp.ldexp(jnp.where(bad[..., None], 0.0, xb), -e[..., None]), f)
  codes = values_to_codes(r, f).reshape(xf.shape)
  # OCP: a NaN scale (E8M0 0xFF) makes the whole block decode to NaN; a finite scale would hide it.
  return codes, jnp.where(bad, 255, e + E8M0_BIAS).astype(jnp.uint8)


def scales_to_f32(s: jax.Array) -> jax.Array:
  """E8M0 codes -> 2^(s - 127) float32 (exact; 0 -> 2^-127, 255 -> NaN)."""
  s = s.astype(jnp.int32)
  v = jnp.ldexp(jnp.ones(s.shape, jnp.float32), s - E8M0_BIAS)
  return jnp.where(s == 255, jnp.nan, v)


@functools.partial(jax.jit, static_argnames=("fmt",))
def mx_decode(codes: jax.Array, scales: jax.Array, fmt) -> jax.Array:
  """(codes [..., Kb], scales [..., Kb / 32]) -> float32 [..., Kb] (exact)."""
  v = codes_to_values(codes, fmt)
  s = scales_to_f32(scales)
  vb = v.reshape(*v.shape[:-1], -1, BLOCK) * s[..., None]
  return vb.reshape(v.shape)


@functools.partial(jax.jit, static_argnames=("fmt", "scale_rule"))
def fake_quantize(x: jax.Array, fmt, scale_rule: str = "ceil") -> jax.Array:
  """x -> MX-rounded x (float32, same shape); the accuracy-side view of the format."""
  codes, s = mx_encode(x, fmt, scale_rule)
  return mx_decode(codes, s, fmt)[..., : x.shape[-1]]


# ---------------------------------------------------------------- kernel-facing layouts


def mixed_channel_order(act_amax: jax.Array, k6: int) -> jax.Array:
  """Input-channel order for a mixed MXFP4 / MXFP6 layer (MicroMix / MXQuant keep the channels
  with the largest activations at higher precision).

  act_amax [K] (calibration |x| max per input channel) -> perm [K] int32: the other channels in
  their order, then the k6 largest in their order. Quantize w[:, perm] with `mx_quantize_weight(.., k6)`
  and feed x[:, perm] to `mx_quantize_act(.., k6)` (or fold perm into the layer that produces x);
  x[:, perm] @ w[:, perm].T is x @ w.T.
  """
  k = act_amax.shape[0]
  if not 0 <= k6 <= k:
    raise ValueError(f"{k6=} must be in [0, K={k}]")
  top = jnp.argsort(-act_amax.astype(jnp.float32), stable=True)[:k6]
  last = jnp.zeros((k,), bool).at[top].set(True)
  return jnp.argsort(last, stable=True).astype(jnp.int32)


class MXWeights(NamedTuple):
  w4: jax.Array           # [N, K4p / 2] uint8: packed E2M1 codes, int4_pack layout
  s4: jax.Array           # [N, K4p / 32] uint8 E8M0
  w6: jax.Array | None    # [N, K6p] float8_e4m3fn holding E3M2 values, or None
  s6: jax.Array | None    # [N, K6p / 32] uint8 E8M0


def split_layout(k: int, k6: int):
  """Logical K = K4 + K6 -> padded (K4p, K6p): the MXFP4 part to 128 (pack block), MXFP6 to 32."""
  if not 0 <= k6 <= k:
    raise ValueError(f"{k6=} must be in [0, K={k}]")
  k4 = k - k6
  return padded_k(k4, PACK_BLOCK) if k4 else 0, padded_k(k6, BLOCK) if k6 else 0


@functools.partial(jax.jit, static_argnames=("k6", "scale_rule"))
def mx_quantize_weight(w: jax.Array, k6: int = 0, scale_rule: str = "ceil") -> MXWeights:
  """w [N, K] (channels already reordered: the last k6 are the sensitive ones) -> MXWeights.

  The first K - k6 columns become MXFP4, the last k6 MXFP6; each part is zero padded on its own.
  """
  n, k = w.shape
  k4p, k6p = split_layout(k, k6)
  if k4p == 0:
    raise ValueError(f"{k6=} leaves no MXFP4 columns (K={k})")
  c4, s4 = mx_encode(pad_k(w[:, : k - k6], k4p), "fp4", scale_rule)
  w6 = s6 = None
  if k6:
    c6, s6 = mx_encode(pad_k(w[:, k - k6:], k6p), "fp6", scale_rule)
    w6 = codes_to_values(c6, "fp6").astype(jnp.float8_e4m3fn)  # exact
  return MXWeights(pack_int4(c4, signed=False), s4, w6, s6)


@functools.partial(jax.jit, static_argnames=("k6", "scale_rule"))
def mx_quantize_act(x: jax.Array, k6: int = 0, scale_rule: str = "ceil"):
  """x [M, K] -> MXFP8 (x_e [M, K4p + K6p] float8_e4m3fn, x_s [M, (K4p + K6p) / 32] uint8), laid
  out like the weights of `mx_quantize_weight(w, k6)` (each part padded on its own)."""
  m, k = x.shape
  k4p, k6p = split_layout(k, k6)
  parts = [pad_k(x[:, : k - k6], k4p)] + ([pad_k(x[:, k - k6:], k6p)] if k6 else [])
  xp = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
  codes, s = mx_encode(xp, "fp8", scale_rule)
  return codes_to_values(codes, "fp8").astype(jnp.float8_e4m3fn), s


@jax.jit
def dequantize_weight(wq: MXWeights) -> jax.Array:
  """MXWeights -> float32 [N, K4p + K6p] in the padded layout (exact)."""
  w4 = mx_decode(unpack_int4(wq.w4).astype(jnp.uint8), wq.s4, "fp4")
  if wq.w6 is None:
    return w4
  w6 = wq.w6.astype(jnp.float32).reshape(wq.w6.shape[0], -1, BLOCK)
  w6 = (w6 * scales_to_f32(wq.s6)[..., None]).reshape(wq.w6.shape)
  return jnp.concatenate([w4, w6], axis=1)


@jax.jit
def dequantize_act(x_e: jax.Array, x_s: jax.Array) -> jax.Array:
  """MXFP8 (x_e, x_s) -> float32 [M, Kt] (exact)."""
  xb = x_e.astype(jnp.float32).reshape(x_e.shape[0], -1, BLOCK)
  return (xb * scales_to_f32(x_s)[..., None]).reshape(x_e.shape)
