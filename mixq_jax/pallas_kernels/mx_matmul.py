"""MX matmul: MXFP8 activations x MXFP4 weights, optionally with a trailing MXFP6 channel set.

Shape letters: M tokens, N output features, K4p / K6p the padded MXFP4 / MXFP6 parts of K
(layouts in `mx`), Kt = K4p + K6p, blocks of 32 along K share one E8M0 scale.

    y[m, n] = sum over 32-blocks b of  2^(ex[m, b] + ew[n, b]) * sum_{k in b} xe[m, k] * we[n, k]

Two paths, chosen by `use_fp8` (default: the 16-bit path; see `_default_use_fp8` for why):

* FP8: the E2M1 codes are decoded in registers to E4M3 (exact), MXFP6 weights are already E4M3
  bytes; each 32-wide K step is one FP8 MMA (f32 accumulate) whose result is scaled by
  2^ex[m] * 2^ew[n] and added to the float32 accumulator.
* 16-bit (Ampere; also the default on Hopper). Pre-Ada Triton cannot convert from float8, so XLA widens
  the float8 operands (x_e, MXFP6 weights) before the call, an extra pass over x and the MXFP6 columns
  (small at decode). With `FP4_DECODE = "words"` (default) the operands are fp16: E4M3 values are
  exact in fp16, and `_fp4_word_pairs` turns two E2M1 codes into fp16 values (times 2^-14, exact) per
  32-bit shift / mask / OR; each 32-wide block's fp16 MMA partial is scaled by 2^ex[m] 2^ew[n] 2^14 and
  added to the float32 accumulator (x's MXFP4 part is reordered by XLA in the same pass to match the
  decode's column order, `mx_x_order`). With "bits" / "float" the operands are bf16, the block scales
  are applied to them (exact: a power of two times a value of <= 4 significant bits, within bf16's
  exponent range), and the bf16 MMA accumulates in place; the E2M1 decode then costs ~3x the
  instructions (`bench/inspect_kernels.py`).

On the "words" path each loop step also loads the next step's scale words (a loop carry,
`PREFETCH_SCALES`): Triton's pipeliner stages only loads that feed a dot, so without it every step waited
for its own scale loads (up to 1.06x faster at decode on an H100, BENCHMARKS.md).

At decode K is split over `config.split_k` programs (4 or 8 on 64-wide N tiles, tuned table), whose fully scaled
float32 partials XLA sums; the trailing MXFP6 blocks go with the last slice. Unsplit, a 4096-wide N gave
about one four-warp program per SM (H100: 0.60-0.95x of bf16 at M <= 16 against 0.94-1.46x split,
BENCHMARKS.md).

Exact vs rounded: every element, every scale and every product is exact (E4M3 x E2M1/E3M2
products have <= 8 significant bits); the block sums are summed in float32, so on the 16-bit path
the only rounding is float32 accumulation (and the final cast). On the FP8 path on Hopper each
32-term block sum is formed by an FP8 wgmma (see `_triton.allow_fp8_wgmma`), whose internal
accumulator NVIDIA does not document as full float32 (DeepSeek-V3 measured about 14 bits), before
it is promoted to the float32 accumulator: expect per-block sums rounded to roughly that. The reference decodes everything to float32 exactly and
contracts at HIGHEST precision. E8M0 code 0 (2^-127) decodes to 0 in the kernel (f32 subnormal);
such blocks have amax < 2^-118 and do not occur for bf16 inputs of practical size. On the "words"
path the 2^14 goes with the activation scale, so activation codes above 240 (block amax >= 2^113)
would overflow; bf16 activations of practical size stay far below.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mixq_jax.pallas_kernels import _shapes, xla_matmuls
from mixq_jax.pallas_kernels._w4_common import half_word_values, select_config
from mixq_jax.pallas_kernels.configs import KernelConfig
from mixq_jax.pallas_kernels.int4_pack import HALF, PACK_BLOCK, unpack_halves
from mixq_jax.pallas_kernels.mx import BLOCK, MXWeights, dequantize_act, dequantize_weight
from mixq_jax.pallas_kernels.w8a8_matmul import _NT, _tile_ids, tiled_pallas_call
from mixq_jax.pallas_kernels.w8a8_matmul_hopper import on_hopper


def _pow2(s, offset=0):
  """E8M0 codes (any int dtype) -> 2^(s + offset - 127) float32, by placing s + offset in the f32 exponent
  field (codes up to 254 - offset)."""
  return jax.lax.bitcast_convert_type(jnp.left_shift(s.astype(jnp.int32) + offset, 23), jnp.float32)


def _fp4_values(c):
  """E2M1 codes [.., 32] int8 in [0, 15] -> float32 values (exact): (1 + m/2) 2^(e-1), or m/2."""
  c = c.astype(jnp.int32)
  e = jnp.right_shift(c, 1) & 3
  mant = (c & 1).astype(jnp.float32)
  two_e = jnp.left_shift(1, e).astype(jnp.float32)
  mag = jnp.where(e == 0, 0.5 * mant, (2.0 + mant) * two_e * 0.25)
  return jnp.where((c & 8) != 0, -mag, mag)


def _fp4_scaled_bf16(c, ws):
  """E2M1 codes [bn, 32] (int8, [0, 15]) and E8M0 codes ws [bn, 1] -> value * 2^(ws - 127) as bf16,
  built from integer bit operations alone (no float math, no conversions).

  A nonzero magnitude code (e, m) = (c >> 1 & 3, c & 1) is (1 + m/2) 2^(e-1) for e >= 1 and 0.5 for
  code 1, so the scaled value is the bf16 with exponent field e + ws - 1 and top mantissa bit m
  (code 1: exponent field ws - 1, mantissa 0). Exact wherever that field is a normal exponent:
  2 <= ws <= 252 (scales 2^-125 .. 2^125); blocks with ws < 2 (amax < 2^-122, never seen in bf16 weights of
  practical size) decode to 0, as code 0 (2^-127) does on the float path.
  """
  c = c.astype(jnp.int32)
  mag = c & 7
  ws = ws.astype(jnp.int32)
  bits = jnp.left_shift(mag, 6) + jnp.left_shift(ws - 1, 7)  # (e + ws - 1) << 7 | m << 6
  bits = jnp.where(mag == 1, bits - 64, bits)
  bits = jnp.where((mag == 0) | (ws < 2), 0, bits) | jnp.left_shift(c & 8, 12)
  return jax.lax.bitcast_convert_type(bits.astype(jnp.int16), jnp.bfloat16)


# How the 16-bit path decodes E2M1 weights: "words" (`_fp4_word_pairs`: two codes to fp16 per 32-bit
# shift / mask / OR, fp16 MMA, block scales on the per-block partial), "bits" (`_fp4_scaled_bf16`, one
# code per int32 lane, scales on the bf16 operands) or "float" (`_fp4_values` times the scale in float32,
# the first version). "words" measured 1.37-1.51x faster than "bits" (H100, 2026-12-06: 61.0 against
# 92.3 us at 8192 x 8192, M = 16; BENCHMARKS.md); the others stay for A/B timing on other GPUs.
FP4_DECODE = "words"
# "words": the scale words of the next loop step are loaded during the current one (a loop carry). Triton's
# pipeliner does not stage loads that do not feed a dot, so otherwise each step waits for its own.
PREFETCH_SCALES = True
_FP4_MAG, _FP4_SIGN = 0x0E000E00, 0x80008000  # fp16 bits [11:9] (exponent low 2, mantissa top) and 15
_FP4_F16_SHIFT = 14  # _fp4_word_pairs' values are the E2M1 values times 2^-14


def _fp4_word_pairs(p, pos):
  """uint32 words [bn, W] of packed E2M1 codes -> [bn, 2 W] fp16 = value * 2^-14 (exact), from the code
  at bits [pos, pos + 4) of each 16-bit half word: two codes per shift / mask / OR, no conversion.

  A code's magnitude bits (e1 e0 m), moved to fp16 bits [11:9], are the exponent field e and the top
  mantissa bit m: (1 + m/2) 2^(e - 15) for e >= 1 and the subnormal m 2^-15 for e = 0, i.e. the E2M1
  value ((1 + m/2) 2^(e-1), or m/2) times 2^-14. Its sign bit goes to bit 15. (bf16 would make code 1 a
  float32 subnormal, which CPUs flush to zero; an fp16 subnormal widens to a normal float32.) The low
  half word's value comes first, so with pos = 8 e + 4 a word j gives columns 2 j (byte e) and
  2 j + 1 (byte e + 2), as `mx_x_order` lays out x.
  """
  mag = jnp.right_shift(p, jnp.uint32(pos - 9)) if pos >= 9 else jnp.left_shift(p, jnp.uint32(9 - pos))
  bits = (mag & jnp.uint32(_FP4_MAG)) | (jnp.left_shift(p, jnp.uint32(12 - pos)) & jnp.uint32(_FP4_SIGN))
  return half_word_values(bits, jnp.float16)


def mx_x_order(x):
  """x [M, Kt] -> the same values with each 32-block in `_fp4_word_pairs`' column order: block column
  k = 4 j + e + 2 h (word j, byte e of the low half word, h = half word) moves to 16 e + 2 j + h."""
  m, kt = x.shape
  return x.reshape(m, kt // BLOCK, BLOCK // 4, 2, 2).transpose(0, 1, 4, 2, 3).reshape(m, kt)


def _mx_kernel(x_ref, xs_ref, w4_ref, s4_ref, w6_ref, s6_ref, o_ref, *, nb4, nb6, k4p, u,
               use_fp8, words, split_k, xs4_ref=None):
  # x_ref [bm, Kt] f8 (widened to bf16 on the 16-bit path, to fp16 with its MXFP4 part in
  # `mx_x_order` with `words`); xs_ref [bm, Kt/32] u8; w4_ref [bn, K4p/2] u8 (uint32 [bn, K4p/8] with
  # words); s4_ref [bn, K4p/32] u8 (uint32 [bn, K4p/128] with words: the 4 codes of a pack block in one
  # word); w6_ref [bn, K6p] f8 (bf16 / fp16) | None; s6_ref [bn, K6p/32] u8 | None; o_ref [bm, bn];
  # xs4_ref [bm, K4p/128] uint32 (words only: x's MXFP4-part scale codes, 4 per word).
  # With split_k > 1, program (i, s) covers the s-th slice of the MXFP4 loop steps (the last slice
  # maybe shorter) and the last slice also the MXFP6 blocks; o_ref is then its float32 partial.
  # M is padded to a multiple of bm by the wrapper: a masked load's fill value cannot be converted
  # to float8 by the Triton lowering (seen on H100, jax 0.11.2), so this kernel never masks.
  bn = o_ref.shape[1]

  def load_rows(ref, cols):
    return ref[:, cols]

  def step(acc, xcol, xblk, wv, ws, scaled=False):
    """One 32-wide K step: x columns [xcol, xcol + 32) (scale block xblk) against weight values
    wv [bn, 32] (float32, bf16 or f8) with E8M0 codes ws [bn, 1] (already applied if `scaled`)."""
    xe = load_rows(x_ref, pl.ds(xcol, BLOCK))            # [bm, 32] f8
    sx = _pow2(load_rows(xs_ref, pl.ds(xblk, 1)))        # [bm, 1]
    if use_fp8 or words:  # fp16 with words: element products exact, scales on the partial
      sw = jnp.reshape(_pow2(ws), (1, bn))               # [1, bn]
      d = jax.lax.dot_general(xe, wv if words else wv.astype(jnp.float8_e4m3fn), _NT,
                              preferred_element_type=jnp.float32)
      return acc + d * sx * sw
    # Both block scales go on the operands (exact in bf16), so the MMA accumulates in place.
    xb = (xe.astype(jnp.float32) * sx).astype(jnp.bfloat16)                  # [bm, 32]
    wb = wv if scaled else (wv.astype(jnp.float32) * _pow2(ws)).astype(jnp.bfloat16)
    return acc + jax.lax.dot_general(xb, wb, _NT, preferred_element_type=jnp.float32)

  def scale_words(b):
    # The block's four E8M0 codes per row / column in one word each: one load, not four strided ones.
    return (load_rows(xs4_ref, pl.ds(b, 1)),                          # [bm, 1] uint32
            jnp.reshape(load_rows(s4_ref, pl.ds(b, 1)), (1, bn)))     # [1, bn] uint32

  def fp4_word_block(b, acc, words_b=None):  # 128 columns: words [16b, 16b+8) and [16b+8, 16b+16)
    xw, ww = words_b if words_b is not None else scale_words(b)
    code = lambda word, i: jnp.right_shift(word, jnp.uint32(8 * i)) & jnp.uint32(0xFF)
    for half in range(2):
      p = w4_ref[:, pl.ds(b * (HALF // 4) + half * (BLOCK // 4), BLOCK // 4)]  # [bn, 8] uint32
      for a in range(2):  # low nibbles: k = 32 half + byte; high: k = 64 + 32 half + byte
        j = 4 * b + half + 2 * a  # 32-block index within the MXFP4 part
        d = None
        for e in range(2):  # bytes e and e + 2 of each word: x columns [32 j + 16 e, + 16)
          xt = load_rows(x_ref, pl.ds(j * BLOCK + e * (BLOCK // 2), BLOCK // 2))  # [bm, 16] fp16
          dt = jax.lax.dot_general(xt, _fp4_word_pairs(p, 8 * e + 4 * a), _NT,
                                   preferred_element_type=jnp.float32)
          d = dt if d is None else d + dt
        sx = _pow2(code(xw, half + 2 * a), _FP4_F16_SHIFT)              # [bm, 1]
        acc = acc + d * sx * _pow2(code(ww, half + 2 * a))               # _pow2(...) [1, bn]
    return acc

  def fp4_block(b, acc):  # 128 columns: bytes [64b, 64b+32) and [64b+32, 64b+64)
    if words:
      return fp4_word_block(b, acc)
    for half in range(2):
      lo, hi = unpack_halves(w4_ref[:, pl.ds(b * HALF + half * BLOCK, BLOCK)])  # [bn, 32] each
      for sub, codes in ((half, lo), (2 + half, hi)):  # lo: k = 32 half + j; hi: k = 64 + ...
        j = 4 * b + sub  # 32-block index within the MXFP4 part
        ws = s4_ref[:, pl.ds(j, 1)]
        bits = FP4_DECODE == "bits" and not use_fp8
        wv = _fp4_scaled_bf16(codes, ws) if bits else _fp4_values(codes)
        acc = step(acc, j * BLOCK, j, wv, ws, scaled=bits)
    return acc

  def fp6_block(j, acc):
    wv = w6_ref[:, pl.ds(j * BLOCK, BLOCK)]  # [bn, 32] f8
    return step(acc, k4p + j * BLOCK, k4p // BLOCK + j, wv, s6_ref[:, pl.ds(j, 1)])

  steps = nb4 // u  # loop steps over the MXFP4 part; a K slice has `per`, the last one maybe fewer
  per = pl.cdiv(steps, split_k)
  s0 = pl.program_id(1) * per if split_k > 1 else 0  # first step of this program's slice

  def step_of(i):
    step = s0 + i
    if steps % split_k:  # uneven slices: the last one repeats its final step and drops it
      step = jnp.minimum(step, steps - 1)
    return step

  def fp4_blocks(i, acc, cur=None):  # u pack blocks per loop step (block_k = 128 u); cur: their scale words
    step = step_of(i)
    new = acc
    for j in range(u):
      new = fp4_block(step * u + j, new) if cur is None else fp4_word_block(step * u + j, new, cur[j])
    return jnp.where(s0 + i < steps, new, acc) if steps % split_k else new

  def fp4_blocks_prefetch(i, carry):  # the same, with the scale words of step i + 1 loaded during step i
    acc, cur = carry
    nxt = [scale_words(step_of(jnp.minimum(i + 1, per - 1)) * u + j) for j in range(u)]
    return fp4_blocks(i, acc, cur), nxt

  acc = jnp.zeros((x_ref.shape[0], bn), jnp.float32)
  if words and PREFETCH_SCALES:
    first = [scale_words(step_of(0) * u + j) for j in range(u)]
    acc, _ = jax.lax.fori_loop(0, per, fp4_blocks_prefetch, (acc, first))
  else:
    acc = jax.lax.fori_loop(0, per, fp4_blocks, acc)
  if nb6 and split_k > 1:  # the MXFP6 blocks go with the last slice (a loop bound that depends on the
    # slice does not lower: Triton's scf.for wants bounds of one type)
    o_ref[...] = acc.astype(o_ref.dtype)

    @pl.when(pl.program_id(1) == split_k - 1)
    def _():
      o_ref[...] = jax.lax.fori_loop(0, nb6, fp6_block, acc).astype(o_ref.dtype)
    return
  if nb6:
    acc = jax.lax.fori_loop(0, nb6, fp6_block, acc)
  o_ref[...] = acc.astype(o_ref.dtype)


def _default_use_fp8() -> bool:
  # Measured on H100 (BENCHMARKS.md, issue 8): the FP8 path ran at 0.55x of bf16 at M = 16 and
  # 0.09x at M = 1024 while its dots compiled to mma.sync on converted operands and spilled (JAX
  # left Triton's maxNumImpreciseAcc at 0). With `_triton.allow_fp8_wgmma` the sm_90 code is QGMMA
  # (FP8 wgmma) with no spill, and still the slowest path: 5011 us (0.15x) at 8192 x 8192, M = 4096,
  # against 3788 us for the 16-bit path and 942 us for XLA's program (2026-12-05). Each K = 32 MMA
  # result must be scaled by 2^(ex + ew) before it is added, two FMAs per accumulator element every
  # 32 columns, which costs more than the FP8 MMA saves (Blackwell's block-scaled MMA removes that
  # step). So the default is the 16-bit path (exact operands); use_fp8=True stays available
  # (compute capability >= 8.9) for comparison.
  return False


def _check(x_e, x_s, w: MXWeights):
  _shapes.check_2d("x_e", x_e, (jnp.float8_e4m3fn,))
  _shapes.check_2d("x_s", x_s, (jnp.uint8,))
  _shapes.check_2d("w4", w.w4, (jnp.uint8,))
  _shapes.check_2d("s4", w.s4, (jnp.uint8,))
  m, kt = x_e.shape
  n, k4h = w.w4.shape
  k4p = 2 * k4h
  if k4p % PACK_BLOCK:
    raise ValueError(f"w4.shape={w.w4.shape}: MXFP4 K={k4p} must be a multiple of {PACK_BLOCK}")
  _shapes.check_mult16(N=n)
  k6p = 0
  if w.w6 is not None:
    _shapes.check_2d("w6", w.w6, (jnp.float8_e4m3fn,))
    k6p = w.w6.shape[1]
    if w.w6.shape[0] != n or k6p % BLOCK or w.s6 is None or w.s6.shape != (n, k6p // BLOCK):
      raise ValueError(f"w6.shape={w.w6.shape}, s6.shape={getattr(w.s6, 'shape', None)}; "
                       f"expected ({n}, K6p), ({n}, K6p/{BLOCK}) with K6p a multiple of {BLOCK}")
  if w.s4.shape != (n, k4p // BLOCK):
    raise ValueError(f"s4.shape={w.s4.shape}, expected ({n}, {k4p // BLOCK})")
  if kt != k4p + k6p or x_s.shape != (m, kt // BLOCK):
    raise ValueError(f"x_e.shape={x_e.shape}, x_s.shape={x_s.shape}; expected ({m}, "
                     f"{k4p + k6p}) = K4p + K6p and ({m}, {(k4p + k6p) // BLOCK}); quantize x "
                     f"with mx.mx_quantize_act(x, k6) to match the weights' layout")
  return m, n, k4p, k6p


_STATIC = ("out_dtype", "use_fp8", "interpret", "config")

# On sm_90 (no explicit config or path), products of at least this many tokens run XLA's program:
# E2M1 / E8M0 decoded to bf16 by XLA, then its bf16 GEMM (xla_matmuls.mx_matmul_xla). Measured on an
# H100 on 8192 x 8192 (BENCHMARKS.md, issue 8): 0.31x bf16 at M = 256 and 0.80x at M = 4096, against
# 0.25x and 0.20x for this kernel's bf16 path (0.15x for its FP8 path at 4096); at M = 16 and 64 this
# kernel wins (0.59x / 0.49x against 0.31x / 0.34x).
XLA_MIN_M = 256


@functools.partial(jax.jit, static_argnames=_STATIC)
def mx_matmul(
    x_e: jax.Array,  # [M, Kt] float8_e4m3fn MXFP8 elements (mx.mx_quantize_act)
    x_s: jax.Array,  # [M, Kt/32] uint8 E8M0
    w: MXWeights,    # MXFP4 [N, K4p/2] (+ MXFP6 [N, K6p]) weights (mx.mx_quantize_weight)
    *,
    out_dtype=jnp.bfloat16,
    use_fp8: bool | None = None,
    interpret: bool = False,
    config: KernelConfig | None = None,
) -> jax.Array:  # [M, N] out_dtype
  """Pallas MXFP8 x MXFP4(/MXFP6) GEMM with E8M0 block scales applied per 32-wide K step."""
  m, n, k4p, k6p = _check(x_e, x_s, w)
  if use_fp8 is None and m >= XLA_MIN_M and on_hopper(interpret, config):
    return xla_matmuls.mx_matmul_xla(x_e, x_s, w, out_dtype=out_dtype)
  use_fp8 = _default_use_fp8() if use_fp8 is None else use_fp8
  cfg = config or select_config("mx", m, n, k4p + k6p)
  bm = max(16, min(cfg.block_m, _shapes.next_pow2(m)))
  bn = _shapes.pow2_divisor(n, cfg.block_n)
  nb4 = k4p // PACK_BLOCK
  u = max(1, _shapes.pow2_divisor(nb4, max(1, cfg.block_k // PACK_BLOCK)))
  # K slices (decode: without them 4096-wide N gives ~one 4-warp program per SM) write float32
  # partials that XLA sums; each is already fully scaled, so the sum is the same float32 algebra
  split_k = max(1, min(cfg.split_k, nb4 // u))
  num_m, num_n = pl.cdiv(m, bm), n // bn
  mp = num_m * bm
  if mp != m:  # pad rows (zeros: E8M0 code 0 and zero elements give zero rows, sliced off)
    x_e = jnp.pad(x_e, ((0, mp - m), (0, 0)))
    x_s = jnp.pad(x_s, ((0, mp - m), (0, 0)))
  ids = functools.partial(_tile_ids, num_m=num_m, num_n=num_n, group_m=cfg.group_m)
  rows = lambda i, *_: (ids(i)[0], 0)
  cols = lambda i, *_: (ids(i)[1], 0)
  words = FP4_DECODE == "words" and not use_fp8
  w4 = w.w4
  in_specs = [pl.BlockSpec((bm, x_e.shape[1]), rows), pl.BlockSpec((bm, x_s.shape[1]), rows),
              pl.BlockSpec((bn, w4.shape[1]), cols), pl.BlockSpec((bn, w.s4.shape[1]), cols)]
  w6 = w.w6
  if words:  # fp16 operands (E4M3 values are exact in fp16), x's MXFP4 part reordered in the same
    # XLA pass; w4 read as uint32 words (a bitcast)
    x16 = x_e.astype(jnp.float16)
    x_e = jnp.concatenate([mx_x_order(x16[:, :k4p]), x16[:, k4p:]], axis=1) if k6p else mx_x_order(x16)
    w4 = jax.lax.bitcast_convert_type(w4.reshape(n, -1, 4), jnp.uint32)
    in_specs[2] = pl.BlockSpec((bn, w4.shape[1]), cols)
    w6 = w6.astype(jnp.float16) if k6p else None
  elif not use_fp8:  # pre-Ada Triton cannot convert from float8: widen the f8 operands in XLA
    x_e = x_e.astype(jnp.bfloat16)
    w6 = w6.astype(jnp.bfloat16) if k6p else None
  args = [x_e, x_s, w4, w.s4]
  if k6p:
    in_specs += [pl.BlockSpec((bn, k6p), cols), pl.BlockSpec((bn, w.s6.shape[1]), cols)]
    args += [w6, w.s6]
  if words:  # scale codes of the MXFP4 part as uint32 words, 4 per pack block (a bitcast when k6p = 0)
    as_words = lambda a: jax.lax.bitcast_convert_type(a.reshape(a.shape[0], -1, 4), jnp.uint32)
    args[3] = as_words(w.s4)
    in_specs[3] = pl.BlockSpec((bn, nb4), cols)
    in_specs.append(pl.BlockSpec((bm, nb4), rows))
    args.append(as_words(x_s[:, : k4p // BLOCK]))

  def kernel_fn(*refs):
    refs = list(refs)
    xs4 = refs.pop(-2) if words else None  # the last input
    if not k6p:
      refs[4:4] = [None, None]
    _mx_kernel(*refs, nb4=nb4, nb6=k6p // BLOCK, k4p=k4p, u=u, use_fp8=use_fp8, words=words,
               split_k=split_k, xs4_ref=xs4)

  out = tiled_pallas_call(kernel_fn, in_specs, args, ids=ids, m=mp, n=n, bm=bm, bn=bn,
                          num_tiles=num_m * num_n, split_k=split_k, out_dtype=out_dtype, cfg=cfg,
                          interpret=interpret, name="mx_matmul")
  return out[:m] if mp != m else out


@functools.partial(jax.jit, static_argnames=_STATIC)
def mx_matmul_reference(x_e, x_s, w, *, out_dtype=jnp.bfloat16, use_fp8=None, interpret=False,
                        config=None):
  """Plain-jnp mx_matmul: exact float32 decode of both operands, HIGHEST-precision contraction."""
  del use_fp8, interpret, config
  _check(x_e, x_s, w)
  y = jax.lax.dot_general(dequantize_act(x_e, x_s), dequantize_weight(w), _NT,
                          precision=jax.lax.Precision.HIGHEST)
  return y.astype(out_dtype)
