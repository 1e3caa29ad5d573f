"""The int4 packing layout of the 4-bit kernels, and the offline quantizers that produce it.

Shape letters: N rows (output features), K logical columns (input features), Kp = K rounded up
to a multiple of PACK_BLOCK (zero padded), G = Kp / group.

Layout ("split halves"): K is cut into blocks of PACK_BLOCK = 128 columns. Within block b, byte j
(0 <= j < 64) of a row holds

    low nibble  = value at k = 128 b + j
    high nibble = value at k = 128 b + 64 + j

so a packed row is [Kp / 2] bytes. Why: Pallas Triton cannot interleave or concatenate tiles
along K, but a packed tile [bn, 64] unpacks with one mask and one shift into two [bn, 64] tiles
that feed two dots directly, against the two contiguous halves x[:, 128b : 128b+64] and
x[:, 128b+64 : 128b+128] of the activation tile. No shuffle is ever needed.

Signed values (symmetric int4, [-8, 7]) are stored as two's-complement nibbles in int8 bytes and
unpack by arithmetic shifts ((p << 4) >> 4 and p >> 4, sign-extending to exact int8). Unsigned
values (asymmetric int4 with zero point, [0, 15]) are stored in uint8 bytes and unpack by
p & 15 and p >> 4.

Asymmetric weights (`quantize_w4_asym`, the w4a16 kernel's) are stored with their columns reordered
within each block before packing (`to_asym_storage_order`): the packed byte 4 j + 2 h + e (word j,
half word h, byte e of the half word) holds in its low / high nibble (a = 0 / 1) the value at
k = 128 b + 64 e + 32 a + 2 j + h. Why: the decode kernel turns nibble position (e, a) of every
32-bit word into 16-bit floats by bit operations (`_w4_common._magic_block`), two per word, with
the low half word's value first; in this order those 32 values are the contiguous columns
[128 b + 32 (2 e + a), + 32) and meet x as it is. With the plain order the activations were
reordered by an XLA pass on every call, which cost 1.2-1.9 us of a 10-26 us decode call on an
H100 (BENCHMARKS.md, 2026-12-06). The kernel's large-M path forms W from the same values and also reads x
as it is; paths that unpack the halves (the byte unpack, `MAGIC = False`, and the XLA program) reorder x
instead (`to_asym_storage_order(x)`), and `dequantize_w4_asym` / the reference undo the order.

K that is not a multiple of PACK_BLOCK (or of the group) is zero padded here, at quantization
time: SmolLM2-135M has K = 576 = 4.5 x 128, so its last pack block / group is partial. The
kernels pad the activations with zeros to Kp, so the padded columns contribute nothing.
"""

import functools

import jax
import jax.numpy as jnp

PACK_BLOCK = 128     # K columns per packed block (64 bytes per row)
HALF = PACK_BLOCK // 2


def padded_k(k: int, multiple: int = PACK_BLOCK) -> int:
  return -(-k // multiple) * multiple


def check_x_k(name: str, shape, kp: int, unit: int = PACK_BLOCK):
  """x's K must be the K the weights were quantized from: Kp is K padded up to `unit` (the pack
  block, or a larger group), so kp - unit < K <= kp. A shorter x would be zero-padded into a wrong
  product without this check."""
  k = shape[1]
  if not kp - unit < k <= kp:
    raise ValueError(f"{name}.shape={tuple(shape)} has K={k}, but the packed weights were quantized from "
                     f"K in ({kp - unit}, {kp}] (Kp={kp}, K padded to a multiple of {unit})")


def pad_k(a: jax.Array, kp: int) -> jax.Array:
  """Zero-pad the last axis of `a` to kp."""
  k = a.shape[-1]
  if k > kp:
    raise ValueError(f"K={k} > padded K={kp}")
  if k == kp:
    return a
  return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, kp - k)])


@functools.partial(jax.jit, static_argnames=("signed",))
def pack_int4(q: jax.Array, *, signed: bool) -> jax.Array:
  """q [..., Kp] int in [-8, 7] (signed) or [0, 15] -> packed [..., Kp / 2] int8 / uint8."""
  kp = q.shape[-1]
  if kp % PACK_BLOCK:
    raise ValueError(f"K={kp} must be a multiple of {PACK_BLOCK}; pad with pad_k first")
  q = q.astype(jnp.int32).reshape(*q.shape[:-1], kp // PACK_BLOCK, 2, HALF)
  byte = (q[..., 0, :] & 0xF) | ((q[..., 1, :] & 0xF) << 4)  # [..., Kp/128, 64] in [0, 255]
  byte = byte.reshape(*q.shape[:-3], kp // 2)
  if signed:  # reinterpret the byte as two's complement
    return jnp.where(byte >= 128, byte - 256, byte).astype(jnp.int8)
  return byte.astype(jnp.uint8)


def to_asym_storage_order(a: jax.Array) -> jax.Array:
  """[..., Kp] in natural column order -> the asymmetric int4 storage order (module docstring): position
  64 a + 4 j + 2 h + e of each 128-block takes column 64 e + 32 a + 2 j + h. A permutation within blocks."""
  kp = a.shape[-1]
  lead = a.shape[:-1]
  b = a.reshape(*lead, kp // PACK_BLOCK, 2, 2, HALF // 4, 2)  # [..., block, e, a, j, h]
  nd = b.ndim
  return jnp.moveaxis(b, nd - 4, nd - 1).reshape(*lead, kp)  # [..., block, a, j, h, e]


def from_asym_storage_order(a: jax.Array) -> jax.Array:
  """Inverse of `to_asym_storage_order`: storage order [..., Kp] -> natural column order."""
  kp = a.shape[-1]
  lead = a.shape[:-1]
  b = a.reshape(*lead, kp // PACK_BLOCK, 2, HALF // 4, 2, 2)  # [..., block, a, j, h, e]
  nd = b.ndim
  return jnp.moveaxis(b, nd - 1, nd - 4).reshape(*lead, kp)  # [..., block, e, a, j, h]


def unpack_halves(p: jax.Array):
  """Packed tile [..., 64 j] -> (low, high) [..., 64] int8: the values of the two block halves.

  Used both by the kernels (on tiles) and by `unpack_int4`. int8 input = signed values, uint8 =
  unsigned; the result is int8 either way (exact: [-8, 7] or [0, 15]).
  """
  if p.dtype == jnp.int8:
    lo = jnp.right_shift(jnp.left_shift(p, 4), 4)  # arithmetic shift sign-extends the nibble
    hi = jnp.right_shift(p, 4)
    return lo, hi
  if p.dtype == jnp.uint8:
    lo = (p & 0xF).astype(jnp.int8)
    hi = jnp.right_shift(p, 4).astype(jnp.int8)
    return lo, hi
  raise ValueError(f"packed dtype {p.dtype} must be int8 (signed) or uint8 (unsigned)")


@jax.jit
def unpack_int4(p: jax.Array) -> jax.Array:
  """Inverse of pack_int4: [..., Kp / 2] -> [..., Kp] int8."""
  kb = p.shape[-1]
  if kb % HALF:
    raise ValueError(f"packed K={kb} must be a multiple of {HALF}")
  pb = p.reshape(*p.shape[:-1], kb // HALF, HALF)
  lo, hi = unpack_halves(pb)
  return jnp.stack([lo, hi], axis=-2).reshape(*p.shape[:-1], 2 * kb)


def nibble_bytes_to_int8(v: jax.Array, scale: jax.Array | None = None) -> jax.Array:
  """uint32 words whose four bytes each hold a two's-complement int4 code (0..15) -> words whose bytes
  are the int8 value q (default) or q * scale (scale uint32 in [1, 15], broadcast).

  v XOR 8 is u = q + 8 in [0, 15]. Then u s + (128 - 8 s) = q s + 128 lies in [8, 248] for |q s| <= 120,
  so a single word multiply-add has no carry between bytes, and XOR 0x80 leaves q s in two's complement.
  Used by XLA programs and inside the Pallas kernels (Triton and Mosaic GPU) alike: jnp ops on uint32.
  """
  u = v ^ jnp.uint32(0x08080808)
  if scale is None:
    return (u + jnp.uint32(0x78787878)) ^ jnp.uint32(0x80808080)
  return (u * scale + (jnp.uint32(128) - jnp.uint32(8) * scale) * jnp.uint32(0x01010101)) ^ jnp.uint32(0x80808080)


def unpack_int4_words(p: jax.Array, group_scale: jax.Array | None = None) -> jax.Array:
  """unpack_int4 for XLA programs: the same [..., Kp] int8 result, computed on 32-bit words.

  XLA runs unpack_int4's byte-wise shifts one byte per thread; here four packed bytes are one
  uint32, the nibbles are split with masks (SWAR), and the signed ones become int8 by
  `nibble_bytes_to_int8`; the words are bitcast back to bytes. Signed (int8) input gives [-8, 7],
  unsigned (uint8) [0, 15], exactly as unpack_int4.

  group_scale [..., Kp/128] int in [1, 15] (signed input only; QQQ's second level) returns q * s,
  exact in int8 ([-120, 105]).
  """
  kb = p.shape[-1]
  if kb % HALF:
    raise ValueError(f"packed K={kb} must be a multiple of {HALF}")
  if group_scale is not None and p.dtype != jnp.int8:
    raise ValueError("group_scale applies to signed (int8-packed) values only")
  lead = p.shape[:-1]
  w = jax.lax.bitcast_convert_type(p.view(jnp.uint8).reshape(*lead, kb // HALF, HALF // 4, 4), jnp.uint32)
  lo = w & jnp.uint32(0x0F0F0F0F)  # [..., Kp/128, 16]: byte j of each word = low nibble of byte j
  hi = jnp.right_shift(w, jnp.uint32(4)) & jnp.uint32(0x0F0F0F0F)
  if p.dtype == jnp.int8:
    sc = None if group_scale is None else group_scale.astype(jnp.uint32)[..., None]  # [..., Kp/128, 1]
    lo, hi = nibble_bytes_to_int8(lo, sc), nibble_bytes_to_int8(hi, sc)
  words = jnp.stack([lo, hi], axis=-2)  # [..., Kp/128, 2, 16] uint32
  return jax.lax.bitcast_convert_type(words, jnp.int8).reshape(*lead, 2 * kb)


# ---------------------------------------------------------------- offline weight quantizers


@functools.partial(jax.jit, static_argnames=("group",))
def quantize_w4_asym(w: jax.Array, group: int = 128):
  """AWQ-style int4 asymmetric, one scale + zero point per `group` columns (RTN; AWQ's scale
  search lives in quant/). w [N, K] -> (w_q [N, Kp/2] uint8, scale [G, N] bf16, zero [G, N] bf16).
  w_q's columns are in `to_asym_storage_order` (within each pack block, so the groups are untouched).

  w ~ (q - zero) * scale with q in [0, 15]; zero is an integer in [0, 15] (exact in bf16), so the
  stored form is 4 + 32/group bits per weight (4.25 at g128). Padded columns quantize to q = zero
  and are never read against nonzero activations.
  """
  if PACK_BLOCK % group and group % PACK_BLOCK:
    raise ValueError(f"{group=} must divide or be a multiple of {PACK_BLOCK}")
  n, k = w.shape
  kp = padded_k(k, max(group, PACK_BLOCK))
  wg = pad_k(w.astype(jnp.float32), kp).reshape(n, kp // group, group)
  # Statistics over the real columns only (the zero padding must not widen the range).
  real = (jnp.arange(kp) < k).reshape(1, kp // group, group)
  lo = jnp.minimum(jnp.min(jnp.where(real, wg, jnp.inf), axis=-1), 0.0)
  hi = jnp.maximum(jnp.max(jnp.where(real, wg, -jnp.inf), axis=-1), 0.0)
  scale = jnp.maximum((hi - lo) / 15.0, 1e-8).astype(jnp.bfloat16).astype(jnp.float32)
  zero = jnp.clip(jnp.round(-lo / scale), 0, 15)
  q = jnp.clip(jnp.round(wg / scale[..., None]) + zero[..., None], 0, 15)
  q = jnp.where(real, q, zero[..., None]).reshape(n, kp)
  return (pack_int4(to_asym_storage_order(q), signed=False), scale.T.astype(jnp.bfloat16),
          zero.T.astype(jnp.bfloat16))


@functools.partial(jax.jit, static_argnames=("k",))
def dequantize_w4_asym(w_q, scale, zero, k=None):
  """[N, Kp/2], [G, N], [G, N] -> [N, K] float32 (exact), columns in natural order."""
  q = from_asym_storage_order(unpack_int4(w_q)).astype(jnp.float32)  # [N, Kp]
  n, kp = q.shape
  g = scale.shape[0]
  qg = q.reshape(n, g, kp // g)
  w = (qg - zero.T.astype(jnp.float32)[..., None]) * scale.T.astype(jnp.float32)[..., None]
  return w.reshape(n, kp)[:, : (k or kp)]


@jax.jit
def quantize_w4_sym(w: jax.Array):
  """int4 symmetric per channel: w [N, K] -> (w_q [N, Kp/2] int8 packed, s_w [N] f32).

  q = clip(round(w / s), -8, 7), s = max|w_n| / 7 (QQQ / MixQ-4 / QUIK weights before GPTQ).
  """
  n, k = w.shape
  kp = padded_k(k)
  w = w.astype(jnp.float32)
  s = jnp.maximum(jnp.max(jnp.abs(w), axis=1), 1e-8) / 7.0
  q = jnp.clip(jnp.round(w / s[:, None]), -8, 7)
  return pack_int4(pad_k(q, kp), signed=True), s


@functools.partial(jax.jit, static_argnames=("group",))
def quantize_w4_qqq_g128(w: jax.Array, group: int = 128):
  """QQQ two-level g128: w ~ s_ch[n] * s_g[n, g] * q4 with q4 in [-8, 7] and s_g an integer in
  [1, 15], so q4 * s_g is an exact int8 in [-120, 105] (the kernel forms it in registers).

  w [N, K] -> (w_q [N, Kp/2] int8 packed, s_g [N, G] int8, s_ch [N] f32): s_g in the layout
  `w4a8_matmul(..., s_g=s_g)` takes.
  """
  if group != PACK_BLOCK:
    raise ValueError(f"{group=}: the w4a8 g128 kernel applies one group per pack block of "
                     f"{PACK_BLOCK}")
  n, k = w.shape
  kp = padded_k(k, group)
  wg = pad_k(w.astype(jnp.float32), kp).reshape(n, kp // group, group)
  sg_fp = jnp.maximum(jnp.max(jnp.abs(wg), axis=-1), 1e-8) / 7.0  # [N, G]
  s_ch = jnp.max(sg_fp, axis=1) / 15.0  # [N]
  s_g = jnp.clip(jnp.round(sg_fp / s_ch[:, None]), 1, 15)  # [N, G]
  q = jnp.clip(jnp.round(wg / (s_g * s_ch[:, None])[..., None]), -8, 7).reshape(n, kp)
  return pack_int4(q, signed=True), s_g.astype(jnp.int8), s_ch


@jax.jit
def row_sums(w_q: jax.Array, outlier_idx: jax.Array | None = None,
             outlier_count: jax.Array | None = None) -> jax.Array:
  """Sum over K of the unpacked int4 weights: [N, Kp/2] -> [N] int32 (QUIK's zero-point term).

  With an outlier set (idx [C] int32, count: slots >= count ignored) the outlier columns are left
  out: their activations travel in 16 bits (`quantize_act4_outliers`), so the int4 product must not
  see x's zero point m_x there either."""
  w = unpack_int4(w_q).astype(jnp.int32)  # [N, Kp]
  total = jnp.sum(w, axis=1)
  if outlier_idx is None or outlier_idx.shape[0] == 0:
    return total
  valid = jnp.arange(outlier_idx.shape[0]) < outlier_count
  return total - jnp.sum(jnp.where(valid[None, :], w[:, jnp.where(valid, outlier_idx, 0)], 0), axis=1)


# ---------------------------------------------------------------- activation quantizers (XLA)


def _act4(xf, is_out, asym: bool):
  """x [M, K] f32, is_out [K] bool | None -> (x_q packed, s_x, m_x | None); outlier columns are
  left out of the range and get q = 0."""
  kp = padded_k(xf.shape[1])
  keep = None if is_out is None else ~is_out[None, :]
  if asym:
    lo = jnp.min(xf if keep is None else jnp.where(keep, xf, jnp.inf), axis=1)
    hi = jnp.max(xf if keep is None else jnp.where(keep, xf, -jnp.inf), axis=1)
    lo, hi = jnp.where(lo <= hi, lo, 0.0), jnp.where(lo <= hi, hi, 0.0)  # every column an outlier: range 0
    s = jnp.maximum(hi - lo, 1e-5) / 15.0
    q = jnp.clip(jnp.round((xf - lo[:, None]) / s[:, None]), 0, 15)
    # Padded (and outlier) columns get q = 0, which decodes to m_x, not 0: the kernel's zero-point
    # term m_x * s_w * wsum only sees weight columns in wsum (`row_sums`), and padded weight
    # columns are q = 0, outlier ones left out of wsum, so they contribute nothing.
  else:
    s = jnp.maximum(jnp.max(jnp.abs(xf) if keep is None else jnp.where(keep, jnp.abs(xf), 0.0), axis=1),
                    1e-5) / 7.0
    q = jnp.clip(jnp.round(xf / s[:, None]), -8, 7)
    lo = None
  if keep is not None:
    q = jnp.where(keep, q, 0.0)
  return pack_int4(pad_k(q, kp), signed=not asym), s, lo


@functools.partial(jax.jit, static_argnames=("asym",))
def quantize_act4(x: jax.Array, *, asym: bool = False):
  """Per-token int4 activations, packed in the same layout (XLA; one fusion).

  x [M, K] 16-bit -> symmetric: (x_q [M, Kp/2] int8, s_x [M] f32, None), x ~ s_x q, q in [-8, 7]
  (s_x = amax / 7);  asym (QUIK): (x_q uint8, s_x, m_x [M] f32), x ~ s_x q + m_x, q in [0, 15].
  Rounding is round-half-even (jnp.round).
  """
  return _act4(x.astype(jnp.float32), None, asym)


@functools.partial(jax.jit, static_argnames=("asym",))
def quantize_act4_outliers(x: jax.Array, outlier_idx: jax.Array, outlier_count: jax.Array, *,
                           asym: bool = False):
  """`quantize_act4` with MixQ-4 / QUIK's 16-bit outlier columns split off (XLA; one fusion).

  x [M, K] 16-bit, outlier_idx [C] int32 (fixed capacity; slots >= outlier_count ignored) ->
  (x_q, s_x, m_x | None, x_o [M, C] x.dtype) for `w4a4o16_matmul`: the outlier columns are left out
  of each row's range and quantized to q = 0, and x_o holds them unrounded (slots past the count are
  0). With w_o = W[:, idx] in 16 bits the kernel then computes the int4 product over the other
  columns plus x_o w_o^T, each column counted once. For asym, pass
  `row_sums(w_q, outlier_idx, outlier_count)` as wsum.
  """
  m, k = x.shape
  c = outlier_idx.shape[0]
  valid = jnp.arange(c) < outlier_count  # [C]
  safe = jnp.where(valid, outlier_idx, 0)
  is_out = jnp.zeros((k,), bool).at[safe].max(valid)  # [K]
  x_q, s, lo = _act4(x.astype(jnp.float32), is_out, asym)
  x_o = jnp.where(valid[None, :], x[:, safe], 0).astype(x.dtype)  # [M, C]
  return x_q, s, lo, x_o
