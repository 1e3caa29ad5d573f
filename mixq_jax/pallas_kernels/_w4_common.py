"""Shared Pallas kernel of the int4 family (w4a16, w4a8, w4a4o16) and its block-size defaults.

Shape letters: M tokens, N output features, Kp padded input features (multiple of 128),
G = Kp / 128 groups / pack blocks, C outlier capacity.

The kernel walks K in pack blocks of 128 (layout in `int4_pack`). Per block, the packed weight
tile [bn, 64] unpacks into the low/high halves [bn, 64], which meet the two contiguous halves of
the activation tile in two dots; nothing is concatenated or shuffled.

    xmode "f16"    x [bm, Kp] bf16/fp16; weights -> 16-bit (exact), 16-bit MMA, f32 accumulate
    xmode "int8"   x [bm, Kp] int8; weights sign-extended to int8 (exact), int8 MMA, int32
    xmode "packed" x [bm, Kp/2] packed int4 too (w4a4): both unpacked to int8, int8 MMA, int32
    wmode "asym"   uint8 + per-group scale/zero [G, N]. Small M (block_m < 64): the group's
                   partial dot is corrected and scaled on the accumulator,
                   acc += s (x.q - xsum z) per pack block, with xsum the block's row sums of x
                   (an MMA against a ones tile); one int->16-bit convert per weight and [bm, bn] work per block
                   instead of [bn, 128] dequant work. Large M: the tile is dequantized in registers,
                   W = (q - z) s rounded to x.dtype (as AWQ's kernels do), and the MMA accumulates
                   in place (the small-M form keeps a second [bm, bn] accumulator live). Both read
                   the weights as 32-bit words and form 16 + q by the magic-number trick, whose
                   column order is the weights' storage order, so x is read as it is.
    wmode "sym"    int8 packed, per-channel scale in the epilogue.
    wmode "qqq"    int8 packed + integer group scales s_g [N, G] in [1, 15]: q4 * s_g is an
                   exact int8 formed in registers (QQQ), per-channel scale in the epilogue.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mixq_jax.pallas_kernels import _shapes, configs, tuned_table
from mixq_jax.pallas_kernels._triton import plgpu
from mixq_jax.pallas_kernels.configs import KernelConfig, gpu_name, m_bucket, table_key
from mixq_jax.pallas_kernels.int4_pack import (HALF, PACK_BLOCK, nibble_bytes_to_int8, to_asym_storage_order,
                                               unpack_halves)
from mixq_jax.pallas_kernels.w8a8_matmul import _NT, _tile_ids, outlier_operands, tiled_pallas_call

KERNELS4 = ("w4a16", "w4a8", "w4a8g", "w4a4o16", "mx")

# Small-M w4a16: int4 -> 16-bit float by the magic-number trick on 32-bit words (`_magic_block`)
# instead of byte unpack + integer -> float conversion. Module flag for same-run A/B timing.
MAGIC = True
# Large-M w4a16 (`dequant`): W = (q - z) s made from the same magic values, four K = 32 dots per pack
# block against x as it is, instead of the byte unpack against an XLA-reordered copy of x. H100, M = 2048,
# same process: 313-324 against 336-346 us (4096 x 4096), 827-846 against 855-879 (4096 x 11008), equal at
# 11008 x 4096. On sm_90 the wrapper sends such M to XLA's program (w4a16_matmul.TRITON_MAX_M). Module
# flag for A/B timing.
MAGIC_DEQUANT = True
# w4a8: unpack int4 -> int8 four values per 32-bit operation (`_word_unpack_block`): per-channel as
# the sign-extended q, g128 as q * s_g. Module flag for same-run A/B timing against the byte unpack.
WORD_UNPACK = True
# (bits of 16.0, first mantissa bit worth 1 at that exponent): 16.0 with q in mantissa bits
# [pos, pos + 4) is exactly 16 + q. 16 is the smallest offset with a 4-bit q of step 1 (bf16 has 7
# mantissa bits, fp16 10), and a small offset keeps the MMA's float32 sums of x (16 + q) close in
# size to those of x q (the offset returns through the zero point).
_MAGIC = {jnp.dtype(jnp.bfloat16): (0x4180, 3), jnp.dtype(jnp.float16): (0x4C00, 6)}
MAGIC_OFFSET = 16.0


def default_config(kernel: str, m: int) -> KernelConfig:
  """Starting points before tuning (block_k is a multiple of the 128-column pack block)."""
  mb = m_bucket(m)
  if mb <= 16:  # decode: weight bytes dominate; narrow N tiles and K slices so every SM streams weights
    # The tuned table's bucket defaults (`python bench/gemm4.py --tune`, H100, 2026-12-06 09:01 UTC, with
    # the stage counts swept too): the best geometric mean over 7B qkvo / down and 70B q_o / down at M = 16.
    # Fewer stages won for w4a16, w4a8g and mx (e.g. mx 39.9 against 43.8 us at 8192 x 8192, same run).
    # A re-tune with two-warp candidates (10:53 UTC) moved the H100 table's w4a8g bucket default to two
    # warps, 2% faster by geometric mean; these defaults, for GPUs without entries, keep four.
    if kernel == "w4a16":
      return KernelConfig(block_m=16, block_n=64, block_k=128, num_warps=4, num_stages=3, split_k=4)
    if kernel == "w4a8":
      return KernelConfig(block_m=16, block_n=64, block_k=256, num_warps=4, num_stages=4, split_k=2)
    if kernel == "w4a8g":
      return KernelConfig(block_m=16, block_n=32, block_k=256, num_warps=4, num_stages=2, split_k=4)
    # w4a4o16 (no split-K with outliers) and mx: block_k 256; mx at block_k 1024 unrolls
    # 32 scale blocks per step, compiled for 113 s and ran 0.38x bf16 against 0.49x at block_k 256
    # (H100, 2026-12-05, bench/h100_2026-12-05b/g4_m16.json). mx splits K on 64-wide N tiles:
    # 17.7 against 26.5 us unsplit on 32-wide ones at 4096 x 4096, M = 16 (H100, 2026-12-06).
    if kernel == "mx":
      return KernelConfig(block_m=16, block_n=64, block_k=256, num_warps=4, num_stages=2, split_k=8)
    return KernelConfig(block_m=16, block_n=32, block_k=256, num_warps=4, num_stages=4)
  if mb <= 64:  # mx unrolls block_k / 128 pack blocks per step: at 512 it spilled 544 B per thread
    # w4a16 at M = 64: a 16-bit x tile [64, 512] per stage asked 233472 B of shared memory, over the H100's 232448
    # (the call failed to launch, 2026-12-06); block_k 256 halves it.
    bk = 256 if kernel == "mx" or (kernel == "w4a16" and mb == 64) else 512
    return KernelConfig(block_m=mb, block_n=64, block_k=bk, num_warps=4, num_stages=3)
  # 128 x 128 tiles on 8 warps: the sm_90 machine code of every 4-bit / MX kernel then fits the
  # register file. With 128 x 256 (8 warps) or 128 x 128 (4 warps) each hit 255 registers and
  # spilled 600-780 bytes per thread to local memory inside the main loop (the unpacked int4 tile
  # lives in registers next to the accumulator); see bench/inspect_kernels.py and BENCHMARKS.md.
  return KernelConfig(block_m=128, block_n=128, block_k=128, num_warps=8, num_stages=3)


def select_config(kernel: str, m: int, n: int, k: int) -> KernelConfig:
  """Tuned entry of tuned_table (same keys as configs.select_config), else the default."""
  if kernel not in KERNELS4:
    raise ValueError(f"unknown {kernel=}; expected one of {KERNELS4}")
  gpu, mb = gpu_name(), m_bucket(m)
  entry = tuned_table.TABLE.get(table_key(kernel, gpu, mb, n, k))
  if entry is not None:
    return KernelConfig(**entry)
  entry = tuned_table.TABLE.get(table_key(kernel, gpu, mb, "*", "*"))
  cfg = KernelConfig(**entry) if entry is not None else default_config(kernel, m)
  return configs.spread_untuned(cfg, kernel, n, k)  # not tuned on this N, K


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Plan:
  xmode: str         # "f16" | "int8" | "packed"
  wmode: str         # "asym" | "sym" | "qqq"
  has_sx: bool       # per-token scale in the epilogue
  has_sw: bool       # per-channel scale in the epilogue
  has_zp: bool       # QUIK: + m_x[m] * s_w[n] * wsum[n]
  has_bias: bool
  has_outliers: bool


def _magic_block(w_ref, load_x, b, dtype):
  """One pack block of the 16-bit product, int4 -> float by bit operations on 32-bit words.

  w_ref is the packed weight as uint32 [bn, Kp/8]: word j of block b is bytes 4j..4j+3, in the
  asymmetric storage order of `int4_pack` (`to_asym_storage_order`). Each nibble q, OR-ed under the exponent bits
  of 16.0 (bf16 or fp16, `_MAGIC`), is exactly the float 16 + q, so one shift and one mask-and-OR
  per word make two of them, and no integer -> float conversion runs. The caller removes the
  offset with the zero point (z + 16). A 2-way stack (Triton join) and a reshape lay the two values
  of a word side by side along K, the pair one 16-bit MMA operand register holds; each nibble
  position t = 2 byte + a (0..3) of the words feeds one K = 32 dot whose columns 2 j + h are, by the
  storage order, the contiguous columns k = 128 b + 32 t + 2 j + h of x as it is. (Before, the weights
  were packed in plain order and an XLA pass reordered x on every call: 1.2-1.9 us per decode call on
  an H100, 2026-12-06; splitting the columns in registers instead had measured 14% slower.)
  Returns x . (16 + q) [bm, bn] f32, and sum_k x over the block broadcast to [bm, bn] by an MMA
  against an all-ones tile: the row sums the zero point needs, with no XLA pass over x (an XLA
  pre-pass measured 10% slower per call at that shape).
  """
  p = w_ref[:, pl.ds(b * (HALF // 4), HALF // 4)]  # [bn, 16] uint32
  d = xs = None
  for t in range(4):  # nibble position t = 2 byte + a: byte within the half word, a = low / high nibble
    xt = load_x(b * PACK_BLOCK + t * (HALF // 2), HALF // 2)
    dt = jax.lax.dot_general(xt, _magic_values(p, t, dtype), _NT, preferred_element_type=jnp.float32)
    d = dt if d is None else d + dt
    st = _const_dot(xt, p.shape[0], 1, jnp.float32)
    xs = st if xs is None else xs + st
  return d, xs


def _magic_dequant_block(acc, w_ref, load_x, b, z, s, dtype):
  """One pack block with W dequantized in registers (large M, where the MMA is the cost and a
  per-group correction on the [bm, bn] accumulator would add more than the [bn, 128] dequant):
  W = ((16 + q) - (z + 16)) s from `_magic_values`, rounded to x's dtype, and four K = 32 dots,
  each straight onto acc, against the contiguous columns of x the storage order gives them.
  z, s [1, bn] f32. Returns acc [bm, bn] f32 + x . W over the block."""
  p = w_ref[:, pl.ds(b * (HALF // 4), HALF // 4)]  # [bn, 16] uint32
  bn = p.shape[0]
  zc = jnp.reshape(z + MAGIC_OFFSET, (bn, 1))
  sc = jnp.reshape(s, (bn, 1))
  for t in range(4):
    w = ((_magic_values(p, t, dtype).astype(jnp.float32) - zc) * sc).astype(dtype)  # [bn, 32]
    xt = load_x(b * PACK_BLOCK + t * (HALF // 2), HALF // 2)
    acc = acc + jax.lax.dot_general(xt, w, _NT, preferred_element_type=jnp.float32)
  return acc


def _magic_values(p, t, dtype):
  """uint32 words [bn, 16] -> [bn, 32] 16-bit floats 16 + q of nibble position t (column 2 j + h)."""
  bits, pos = _MAGIC[jnp.dtype(dtype)]
  sh = 4 * t - pos  # move nibble t to mantissa bits [pos, pos + 4) of both half words
  q = jnp.right_shift(p, jnp.uint32(sh)) if sh > 0 else jnp.left_shift(p, jnp.uint32(-sh))
  q2 = q & jnp.uint32((0xF << pos) * 0x10001) | jnp.uint32(bits * 0x10001)  # two 16-bit floats
  return half_word_values(q2, dtype)


def half_word_values(bits, dtype):
  """uint32 [bn, W], each word two 16-bit floats -> [bn, 2 W] dtype, the low half word first (column 2 j).
  A 2-way stack (Triton join) and a reshape: the pair stays in one 32-bit register, as an MMA operand holds it."""
  lo = (bits & jnp.uint32(0xFFFF)).astype(jnp.uint16)
  hi = jnp.right_shift(bits, jnp.uint32(16)).astype(jnp.uint16)
  w = jnp.stack([lo, hi], axis=-1).reshape(bits.shape[0], 2 * bits.shape[1])
  return jax.lax.bitcast_convert_type(w, dtype)


def _const_dot(xt, bn, value, acc_dtype):
  """xt [bm, kt] . full([bn, kt], value).T = value * sum_k xt, as [bm, bn]: a row sum laid out like the
  accumulator, on the tensor cores (a constant operand, no reduction shuffles)."""
  c = jnp.full((bn, xt.shape[1]), value, xt.dtype)
  return jax.lax.dot_general(xt, c, _NT, preferred_element_type=acc_dtype)


def _word_unpack_block(acc, w_ref, load_x, b, sg=None):
  """One pack block of signed int4 as two int8 dots, unpacked four values per 32-bit operation.

  w_ref is the packed weight as uint32 [bn, Kp/8]; word j of block b is bytes 4j..4j+3, whose low
  nibbles are k = 128b + 4j + i and high nibbles k = 128b + 64 + 4j + i (i = byte, little end
  first), so the bytes land in K order with no shuffle. `int4_pack.nibble_bytes_to_int8` turns four
  codes into int8 bytes per word operation:
  sg None (per-channel): the sign-extended q (XOR, add, XOR). The alternative, q + 8 (one XOR) with
  8 sum_k x taken off by an MMA against a constant tile, measured 10% slower per call on an H100 at
  4096 x 4096, M = 1 and 16 (equal at 8192 x 8192).
  sg [bn, 1] (QQQ g128, s_g in [1, 15]): the exact int8 q s_g (one multiply-add and two XORs).
  Returns acc [bm, bn] int32 + x . q or x . (q s_g), exact. Each dot adds straight onto
  acc (Triton folds `acc + dot` into the MMA's accumulator; a sum of dots added later costs an add).
  """
  p = w_ref[:, pl.ds(b * (HALF // 4), HALF // 4)]  # [bn, 16] uint32
  sg = None if sg is None else sg.astype(jnp.uint32)
  for t in range(2):
    v = (jnp.right_shift(p, jnp.uint32(4)) if t else p) & jnp.uint32(0x0F0F0F0F)
    u = nibble_bytes_to_int8(v, sg)
    byte = [(jnp.right_shift(u, jnp.uint32(8 * i)) & jnp.uint32(0xFF)).astype(jnp.int8) for i in range(4)]
    # [bn, 16, 2, 2]: element [j, e, p] = byte 2 e + p (2-way stacks only, as Triton's join)
    q = jnp.stack([jnp.stack(byte[0::2], axis=-1), jnp.stack(byte[1::2], axis=-1)], axis=-1)
    q = q.reshape(p.shape[0], HALF)  # [bn, 64]
    xt = load_x(b * PACK_BLOCK + t * HALF, HALF)
    acc = acc + jax.lax.dot_general(xt, q, _NT, preferred_element_type=jnp.int32)
  return acc


def _w4_kernel(*refs, plan, m, bm, nb, u, num_m, num_n, group_m, split_k, blocks_per_group,
               dequant, magic, words):
  refs = list(refs)
  x_ref = refs.pop(0)                                # [bm, Kp] or [bm, Kp/2]
  sx_ref = refs.pop(0) if plan.has_sx else None      # [bm] f32
  mx_ref = refs.pop(0) if plan.has_zp else None      # [bm] f32
  w_ref = refs.pop(0)                                # [bn, Kp/2] packed
  if plan.wmode == "asym":
    s_ref, z_ref = refs.pop(0), refs.pop(0)          # [G, bn] bf16 each
  elif plan.wmode == "qqq":
    sg_ref = refs.pop(0)                             # [bn, G] int8
  sw_ref = refs.pop(0) if plan.has_sw else None      # [bn] f32
  ws_ref = refs.pop(0) if plan.has_zp else None      # [bn] int32
  b_ref = refs.pop(0) if plan.has_bias else None     # [bn]
  if plan.has_outliers:
    xo_ref, wo_ref, cnt_ref = refs.pop(0), refs.pop(0), refs.pop(0)  # [bm, C], [bn, C], [1]
  o_ref = refs.pop(0)                                # [bm, bn], or f32 partial with split_k
  assert not refs

  pid_m, _ = _tile_ids(pl.program_id(0), num_m, num_n, group_m)
  steps = nb // u  # loop steps over all of K; a K slice has `per`, the last one maybe fewer
  per = pl.cdiv(steps, split_k)
  s0 = pl.program_id(1) * per if split_k > 1 else 0  # first step of this program's slice
  ragged = m % bm != 0
  rmask = ((pid_m * bm + jnp.arange(bm)) < m)[:, None] if ragged else None  # [bm, 1]

  def load_x(start, size):
    cols = pl.ds(start, size)
    if ragged:
      return plgpu.load(x_ref.at[:, cols], mask=rmask, other=0)
    return x_ref[:, cols]

  def group_terms(b):  # this block's group: zero point and scale, [1, bn] f32 each
    g = pl.ds(b // blocks_per_group, 1)
    return z_ref[g, :].astype(jnp.float32), s_ref[g, :].astype(jnp.float32)

  def block(b, acc):  # one pack block of 128 columns
    if words:  # "sym": x . q; "qqq": x . (q s_g)
      sg = sg_ref[:, pl.ds(b // blocks_per_group, 1)] if words == "qqq" else None  # [bn, 1] int8
      return _word_unpack_block(acc, w_ref, load_x, b, sg)
    if magic and dequant:
      z, s = group_terms(b)
      return _magic_dequant_block(acc, w_ref, load_x, b, z, s, x_ref.dtype)
    if magic:  # d = x . (16 + q): the offset joins the zero point
      z, s = group_terms(b)
      d, xs = _magic_block(w_ref, load_x, b, x_ref.dtype)
      return acc + (d - xs * (z + MAGIC_OFFSET)) * s
    lo, hi = unpack_halves(w_ref[:, pl.ds(b * HALF, HALF)])  # [bn, 64] int8 each
    if plan.xmode == "packed":
      x_lo, x_hi = unpack_halves(load_x(b * HALF, HALF))     # [bm, 64] int8 each
    else:
      x_lo, x_hi = load_x(b * PACK_BLOCK, HALF), load_x(b * PACK_BLOCK + HALF, HALF)
    if plan.wmode == "qqq":
      sg = sg_ref[:, pl.ds(b // blocks_per_group, 1)]  # [bn, 1] int8; |q4 * sg| <= 120: exact
      lo, hi = lo * sg, hi * sg
    if plan.xmode == "f16":
      z, s = group_terms(b)
      if dequant:  # W = (q - z) s in registers, in-place MMA accumulation
        bn = lo.shape[0]
        zc, sc = jnp.reshape(z, (bn, 1)), jnp.reshape(s, (bn, 1))
        w_lo = ((lo.astype(jnp.float32) - zc) * sc).astype(x_lo.dtype)
        w_hi = ((hi.astype(jnp.float32) - zc) * sc).astype(x_hi.dtype)
        return (acc + jax.lax.dot_general(x_lo, w_lo, _NT, preferred_element_type=jnp.float32)
                + jax.lax.dot_general(x_hi, w_hi, _NT, preferred_element_type=jnp.float32))
      d = (jax.lax.dot_general(x_lo, lo.astype(x_lo.dtype), _NT, preferred_element_type=jnp.float32)
           + jax.lax.dot_general(x_hi, hi.astype(x_hi.dtype), _NT,
                                 preferred_element_type=jnp.float32))
      bn = lo.shape[0]
      xs = _const_dot(x_lo, bn, 1, jnp.float32) + _const_dot(x_hi, bn, 1, jnp.float32)
      return acc + (d - xs * z) * s  # this block's group: acc += s * (x.q - xsum * z)
    return (acc + jax.lax.dot_general(x_lo, lo, _NT, preferred_element_type=jnp.int32)
            + jax.lax.dot_general(x_hi, hi, _NT, preferred_element_type=jnp.int32))

  def body(i, acc):
    step = s0 + i
    if steps % split_k:  # uneven slices: the last one repeats its final step and drops it
      step = jnp.minimum(step, steps - 1)
    new = acc
    for j in range(u):  # u pack blocks per loop step (block_k = 128 u)
      new = block(step * u + j, new)
    return jnp.where(s0 + i < steps, new, acc) if steps % split_k else new

  acc_t = jnp.float32 if plan.xmode == "f16" else jnp.int32
  acc = jax.lax.fori_loop(0, per, body, jnp.zeros((bm, w_ref.shape[0]), acc_t))
  y = acc.astype(jnp.float32)

  def store(v):
    if ragged:
      plgpu.store(o_ref.at[:, :], v, mask=rmask)
    else:
      o_ref[...] = v

  if split_k > 1:  # group scales are applied; the wrapper sums, applies s_x, s_w and adds the bias
    store(acc if acc_t == jnp.int32 else y)
    return
  if plan.has_sx:
    sx = plgpu.load(sx_ref.at[:], mask=rmask[:, 0], other=0) if ragged else sx_ref[...]
    y = y * sx[:, None]
  if plan.has_sw:
    y = y * sw_ref[...][None, :]
  if plan.has_zp:  # QUIK: x = s_x q + m_x, so x.w = s_x (q.w_q) s_w + m_x s_w sum_k w_q
    mx = plgpu.load(mx_ref.at[:], mask=rmask[:, 0], other=0) if ragged else mx_ref[...]
    y = y + mx[:, None] * (sw_ref[...] * ws_ref[...].astype(jnp.float32))[None, :]
  if plan.has_outliers:
    c = xo_ref.shape[1]
    valid = (jnp.arange(c) < cnt_ref[0])[None, :]  # [1, C]: capacity slots past count ignored
    xo_mask = jnp.broadcast_to(valid & rmask if ragged else valid, xo_ref.shape)
    xo = plgpu.load(xo_ref.at[:, :], mask=xo_mask, other=0)
    wo = jnp.where(valid, wo_ref[...], 0).astype(xo.dtype)
    y = y + jax.lax.dot_general(xo, wo, _NT, preferred_element_type=jnp.float32)
  if plan.has_bias:
    y = y + b_ref[...].astype(jnp.float32)[None, :]
  store(y.astype(o_ref.dtype))


def w4_matmul(x, w_q, *, plan: _Plan, kernel: str, s_x=None, m_x=None, scale=None, zero=None,
              s_g=None, s_w=None, wsum=None, bias=None, x_o=None, w_o=None, count=None,
              out_dtype, interpret, config):
  """Builds and runs the pallas_call (not jitted itself; the public wrappers are).

  x is already padded to Kp (or Kp/2 packed); w_q [N, Kp/2].
  """
  m = x.shape[0]
  n, kh = w_q.shape
  kp = 2 * kh
  nb = kp // PACK_BLOCK
  cfg = config or select_config(kernel, m, n, kp)
  bm = max(16, min(cfg.block_m, _shapes.next_pow2(m)))
  bn = _shapes.pow2_divisor(n, cfg.block_n)
  u = max(1, _shapes.pow2_divisor(nb, max(1, cfg.block_k // PACK_BLOCK)))
  # K slices write partials that XLA sums and scales (int32 for the integer plans, so the sum is the
  # exact accumulator); not with outliers or QUIK's zero point
  split_k = min(cfg.split_k, nb // u) if not (plan.has_outliers or plan.has_zp) else 1
  num_m, num_n = pl.cdiv(m, bm), n // bn
  g = scale.shape[0] if scale is not None else (s_g.shape[1] if s_g is not None else nb)
  blocks_per_group = nb // g
  ids = functools.partial(_tile_ids, num_m=num_m, num_n=num_n, group_m=cfg.group_m)
  row = lambda i, *_: (ids(i)[0],)
  col = lambda i, *_: (ids(i)[1],)

  in_specs = [pl.BlockSpec((bm, x.shape[1]), lambda i, *_: (ids(i)[0], 0))]
  args = [x]
  if plan.has_sx:
    in_specs.append(pl.BlockSpec((bm,), row))
    args.append(s_x)
  words = plan.wmode if WORD_UNPACK and plan.xmode == "int8" and plan.wmode in ("sym", "qqq") else None
  dequant = plan.wmode == "asym" and bm >= 64
  if plan.has_zp:
    in_specs.append(pl.BlockSpec((bm,), row))
    args.append(m_x)
  magic = (MAGIC and plan.xmode == "f16" and plan.wmode == "asym" and (MAGIC_DEQUANT or not dequant)
           and jnp.dtype(x.dtype) in _MAGIC)
  if plan.wmode == "asym" and not magic:  # the halves unpack in storage order: x follows it
    args[0] = to_asym_storage_order(x)
  if words or magic:  # the same bytes as uint32 words (a bitcast, no copy)
    in_specs.append(pl.BlockSpec((bn, kh // 4), lambda i, *_: (ids(i)[1], 0)))
    args.append(jax.lax.bitcast_convert_type(w_q.reshape(n, kh // 4, 4), jnp.uint32))
  else:
    in_specs.append(pl.BlockSpec((bn, kh), lambda i, *_: (ids(i)[1], 0)))
    args.append(w_q)
  if plan.wmode == "asym":
    in_specs += [pl.BlockSpec((g, bn), lambda i, *_: (0, ids(i)[1]))] * 2
    args += [scale, zero]
  elif plan.wmode == "qqq":
    in_specs.append(pl.BlockSpec((bn, g), lambda i, *_: (ids(i)[1], 0)))
    args.append(s_g)
  if plan.has_sw:
    in_specs.append(pl.BlockSpec((bn,), col))
    args.append(s_w)
  if plan.has_zp:
    in_specs.append(pl.BlockSpec((bn,), col))
    args.append(wsum)
  if plan.has_bias:
    in_specs.append(pl.BlockSpec((bn,), col))
    args.append(bias)
  if plan.has_outliers:
    o_specs, o_args = outlier_operands(x_o, w_o, count, bm, bn, ids)
    in_specs += o_specs
    args += o_args

  kern = functools.partial(_w4_kernel, plan=plan, m=m, bm=bm, nb=nb, u=u, num_m=num_m,
                           num_n=num_n, group_m=cfg.group_m, split_k=split_k,
                           blocks_per_group=blocks_per_group, dequant=dequant, magic=magic, words=words)
  return tiled_pallas_call(kern, in_specs, args, ids=ids, m=m, n=n, bm=bm, bn=bn,
                           num_tiles=num_m * num_n, split_k=split_k, out_dtype=out_dtype, cfg=cfg,
                           interpret=interpret, name=f"{kernel}_matmul", bias=bias,
                           partial_dtype=jnp.float32 if plan.xmode == "f16" else jnp.int32,
                           row_scale=s_x if plan.has_sx else None,
                           partial_scale=s_w if plan.has_sw else None)


def check_packed_w(w_q, n_expected=None):
  _shapes.check_2d("w_q", w_q, (jnp.int8, jnp.uint8))
  n, kh = w_q.shape
  if kh % HALF:
    raise ValueError(f"w_q.shape={w_q.shape}: packed K must be a multiple of {HALF} "
                     f"(K padded to {PACK_BLOCK} at quantization time)")
  _shapes.check_mult16(N=n)
  if n_expected is not None and n != n_expected:
    raise ValueError(f"w_q.shape={w_q.shape}, expected N={n_expected}")
  return n, 2 * kh


def pad_x(x, kp: int, name: str = "x"):
  """Zero-pad activations [M, K] to the weights' padded Kp (K must round up to Kp, `int4_pack.check_x_k`)."""
  k = x.shape[1]
  if k > kp:
    raise ValueError(f"{name}.shape={x.shape} does not match packed weights with Kp={kp}")
  return x if k == kp else jnp.pad(x, ((0, 0), (0, kp - k)))
