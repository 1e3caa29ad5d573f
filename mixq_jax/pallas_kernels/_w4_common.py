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
                   acc += s (x.q - xsum z), with xsum [M, G] the per-group row sums of x computed
                   by XLA before the call (an in-kernel row reduction per K step costs shuffles);
                   one int->16-bit convert per weight and [bm, bn] work per group instead of
                   [bn, 128] dequant work. Large M: the tile is dequantized in registers,
                   W = (q - z) s rounded to x.dtype (as AWQ's kernels do), and the MMA accumulates
                   in place (the small-M form keeps a second [bm, bn] accumulator live).
    wmode "sym"    int8 packed, per-channel scale in the epilogue.
    wmode "qqq"    int8 packed + integer group scales s_g [N, G] in [1, 15]: q4 * s_g is an
                   exact int8 formed in registers (QQQ), per-channel scale in the epilogue.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mixq_jax.pallas_kernels import _shapes, tuned_table
from mixq_jax.pallas_kernels._triton import plgpu
from mixq_jax.pallas_kernels.configs import KernelConfig, gpu_name, m_bucket, table_key
from mixq_jax.pallas_kernels.int4_pack import HALF, PACK_BLOCK, unpack_halves
from mixq_jax.pallas_kernels.w8a8_matmul import _NT, _tile_ids, outlier_operands, tiled_pallas_call

KERNELS4 = ("w4a16", "w4a8", "w4a8g", "w4a4o16", "mx")


def default_config(kernel: str, m: int) -> KernelConfig:
  """Starting points before tuning (block_k is a multiple of the 128-column pack block)."""
  mb = m_bucket(m)
  if mb <= 16:  # decode: weight bytes dominate; narrow N tiles so every SM streams weights
    if kernel == "w4a16":
      # 64 x 512 tiles, 3 stages, split-K 2, with the per-group row sums from XLA: 41.7 us, 1.42x
      # bf16 at 70B q_o; in the same run 32 x 1024 split-K 2 gave 1.13x and 32 x 512 1.25x
      # (H100, 2026-12-05, bench/h100_2026-12-05b/g4_m16.json); block_k 256 with in-kernel row sums
      # was 0.76x.
      return KernelConfig(block_m=16, block_n=64, block_k=512, num_warps=4, num_stages=3, split_k=2)
    if kernel == "w4a8g":  # 45.1 us (1.32x) at 70B q_o against 51.2 us (1.16x) at block_k 256 (same run)
      return KernelConfig(block_m=16, block_n=32, block_k=1024, num_warps=4, num_stages=3)
    # block_k 256 / 4 stages: w4a8 ran 33.8 us (1.76x) at 70B q_o, block_k 1024 / 3 stages 34.7 us
    # (1.71x) (H100, 2026-12-05, bench/h100_2026-12-05b/g4_m16.json); mx at block_k 1024 unrolls 32
    # scale blocks per step, compiled for 113 s and ran 0.38x against 0.49x at block_k 256.
    return KernelConfig(block_m=16, block_n=32, block_k=256, num_warps=4, num_stages=4)
  if mb <= 64:  # mx unrolls block_k / 128 pack blocks per step: at 512 it spilled 544 B per thread
    return KernelConfig(block_m=mb, block_n=64, block_k=256 if kernel == "mx" else 512, num_warps=4, num_stages=3)
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
  for key in (table_key(kernel, gpu, mb, n, k), table_key(kernel, gpu, mb, "*", "*")):
    entry = tuned_table.TABLE.get(key)
    if entry is not None:
      return KernelConfig(**entry)
  return default_config(kernel, m)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Plan:
  xmode: str         # "f16" | "int8" | "packed"
  wmode: str         # "asym" | "sym" | "qqq"
  has_sx: bool       # per-token scale in the epilogue
  has_sw: bool       # per-channel scale in the epilogue
  has_zp: bool       # QUIK: + m_x[m] * s_w[n] * wsum[n]
  has_bias: bool
  has_outliers: bool


def _w4_kernel(*refs, plan, m, bm, nb, u, num_m, num_n, group_m, split_k, blocks_per_group,
               dequant):
  refs = list(refs)
  x_ref = refs.pop(0)                                # [bm, Kp] or [bm, Kp/2]
  sx_ref = refs.pop(0) if plan.has_sx else None      # [bm] f32
  xsum_ref = refs.pop(0) if plan.wmode == "asym" and not dequant else None  # [bm, G] f32
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
  b0 = pl.program_id(1) * (nb // split_k) if split_k > 1 else 0  # first pack block of the slice
  ragged = m % bm != 0
  rmask = ((pid_m * bm + jnp.arange(bm)) < m)[:, None] if ragged else None  # [bm, 1]

  def load_x(start, size):
    cols = pl.ds(start, size)
    if ragged:
      return plgpu.load(x_ref.at[:, cols], mask=rmask, other=0)
    return x_ref[:, cols]

  def block(b, acc):  # one pack block of 128 columns
    lo, hi = unpack_halves(w_ref[:, pl.ds(b * HALF, HALF)])  # [bn, 64] int8 each
    if plan.xmode == "packed":
      x_lo, x_hi = unpack_halves(load_x(b * HALF, HALF))     # [bm, 64] int8 each
    else:
      x_lo, x_hi = load_x(b * PACK_BLOCK, HALF), load_x(b * PACK_BLOCK + HALF, HALF)
    if plan.wmode == "qqq":
      sg = sg_ref[:, pl.ds(b // blocks_per_group, 1)]  # [bn, 1] int8; |q4 * sg| <= 120: exact
      lo, hi = lo * sg, hi * sg
    if plan.xmode == "f16":
      g = pl.ds(b // blocks_per_group, 1)
      z = z_ref[g, :].astype(jnp.float32)  # [1, bn]
      s = s_ref[g, :].astype(jnp.float32)  # [1, bn]
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
      # This block's group: acc += s * (x.q - xsum * z).
      if ragged:
        xs = plgpu.load(xsum_ref.at[:, g], mask=rmask, other=0)  # [bm, 1]
      else:
        xs = xsum_ref[:, g]
      return acc + (d - xs * z) * s
    return (acc + jax.lax.dot_general(x_lo, lo, _NT, preferred_element_type=jnp.int32)
            + jax.lax.dot_general(x_hi, hi, _NT, preferred_element_type=jnp.int32))

  def body(i, acc):
    for j in range(u):  # u pack blocks per loop step (block_k = 128 u)
      acc = block(b0 + i * u + j, acc)
    return acc

  acc_t = jnp.float32 if plan.xmode == "f16" else jnp.int32
  acc = jax.lax.fori_loop(0, nb // split_k // u, body,
                          jnp.zeros((bm, w_ref.shape[0]), acc_t))
  y = acc.astype(jnp.float32)

  def store(v):
    if ragged:
      plgpu.store(o_ref.at[:, :], v, mask=rmask)
    else:
      o_ref[...] = v

  if split_k > 1:  # scales are per group (already applied); bias is added in the wrapper
    store(y)
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
  split_k = cfg.split_k if plan.wmode == "asym" and not plan.has_outliers else 1
  while split_k > 1 and (nb // u) % split_k:
    split_k //= 2
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
  dequant = plan.wmode == "asym" and bm >= 64
  if plan.wmode == "asym" and not dequant:  # per-group row sums of x [M, G], one XLA fusion
    xsum = jnp.sum(x.astype(jnp.float32).reshape(m, g, -1), axis=2)
    in_specs.append(pl.BlockSpec((bm, g), lambda i, *_: (ids(i)[0], 0)))
    args.append(xsum)
  if plan.has_zp:
    in_specs.append(pl.BlockSpec((bm,), row))
    args.append(m_x)
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
                           blocks_per_group=blocks_per_group, dequant=dequant)
  return tiled_pallas_call(kern, in_specs, args, ids=ids, m=m, n=n, bm=bm, bn=bn,
                           num_tiles=num_m * num_n, split_k=split_k, out_dtype=out_dtype, cfg=cfg,
                           interpret=interpret, name=f"{kernel}_matmul", bias=bias)


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
  """Zero-pad activations [M, K] to the weights' padded Kp (K > Kp is an error)."""
  k = x.shape[1]
  if k > kp:
    raise ValueError(f"{name}.shape={x.shape} does not match packed weights with Kp={kp}")
  return x if k == kp else jnp.pad(x, ((0, 0), (0, kp - k)))
