"""W4A16 (AWQ g128) matmul for Hopper (sm_90) in Pallas Mosaic GPU, for prefill sizes: TMA loads, a
warp-specialized pipeline, the weight dequantized in registers and fed to a bf16 wgmma from there.

Shape letters: M tokens, N output features, Kp = K padded to 128, G = Kp / group.

    y = x @ W.T (+ bias),   W[n, k] = (q[n, k] - zero[g, n]) * scale[g, n]    # as w4a16_matmul

Why: XLA's program for this product writes W out in bf16 on every call and then runs its bf16 GEMM
(0.61-0.76x of bf16 at M >= 1024 on an H100), and the Triton tile loop ran 0.28-0.37x there. Here the
packed nibbles are what travels: the kernel computes the transposed product yT = W @ x.T, so the
weight tile is wgmma's A operand, which may come from registers (as CUTLASS's mixed-input GEMMs pass
the narrow type), and x's tile is the B operand in shared memory.

The storage order (`int4_pack`, asymmetric order) is read as 16-bit words: word kk of a 128-column
block holds, at bits [4 q, 4 q + 4), the value at column 32 q + kk. So `(word >> 4 q) & 15` over a
[tile, 32] word tile is the weight's K quarter q in natural column order, and OR-ing 0x4300 makes it
the bf16 128 + q exactly (the magic-number conversion; no int -> float convert). Each K step is one
pack block: four quarters, each dequantized as (v - (128 + zero)) * scale in bf16 and multiplied by
its [tile_m, 32] quarter of x (TMA'd as four 64-byte-swizzled tiles).

Exact vs rounded: W is rounded to bf16 once ((q - zero) exact, times scale), as in
`w4a16_matmul_xla` and AWQ's kernels; the wgmma accumulates in float32. The output tile is stored
transposed ([N, M], yT) and transposed back by XLA: one pass over the output, which also adds a bias
(the kernel then writes float32, so that y is rounded once). (A transposed store from the kernel failed
Mosaic GPU's layout inference in jax 0.10; a bias loaded by TMA in the epilogue deadlocked its
interpreter from the second tile per SM on.)

With split_k > 1 each output tile's K range is cut into split_k runs of whole groups, each a work item of
its own writing float32 partials [split_k, N, M] that XLA sums in the transpose (for few tokens, where the
output tiles alone leave SMs idle).

Timed (BENCHMARKS.md issue 8): 0.76-0.91x of bf16 from M = 512 and 1.1-2.0x faster than XLA's program
(H100); 1.02-1.49x of bf16 at M = 32-64 with K split, where the Triton kernel ran 0.39-0.91x (H200); slower
than the Triton decode kernel at M <= 16. `w4a16_matmul` dispatches here from M = 17. Four wgmmas left in
flight per step gave wrong results natively, so each step waits for its own.

Limits (the wrapper `w4a16_matmul` routes elsewhere otherwise): sm_90, bf16 x, N % (2 * tile_n) == 0,
group a multiple of 128, G % split_k == 0; M is padded to the tile. Runs on CPU in Mosaic GPU interpret mode.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mixq_jax.pallas_kernels.int4_pack import PACK_BLOCK, check_x_k

# The module itself: the package re-exports its function of the same name over the attribute.
_h = importlib.import_module("mixq_jax.pallas_kernels.w8a8_matmul_hopper")

QUARTER = PACK_BLOCK // 4  # K columns per magic-number extraction (one nibble position of a word)
_MAGIC = 0x4300  # bf16 128.0: OR-ing a nibble q into its low mantissa bits gives 128 + q exactly


@dataclasses.dataclass(frozen=True)
class W4A16HopperConfig:
  tile_n: int = 64        # weight rows per consumer warpgroup (wgmma M; the CTA has 2 * tile_n)
  tile_m: int = 128       # tokens per CTA, shared by both warpgroups (wgmma N)
  stages: int = 4         # TMA pipeline depth
  grid_tile_width: int = 8
  epi_tile_n: int = 64    # output staging width (tokens)
  split_k: int = 1        # K ranges per output tile, summed by XLA (fills the SMs when N / (2 tile_n) is small)


def _plgpu():
  from jax.experimental.pallas import mosaic_gpu as plgpu  # noqa: PLC0415

  return plgpu


def supported(n: int, kp: int, group: int, cfg: W4A16HopperConfig = W4A16HopperConfig()) -> bool:
  """Whether the shape fits this kernel (the device and dtype checks are the caller's): each of the
  split_k K ranges must hold whole groups."""
  if n % (2 * cfg.tile_n) or kp % PACK_BLOCK or group % PACK_BLOCK or kp % group:
    return False
  groups = kp // group
  return cfg.split_k >= 1 and groups % cfg.split_k == 0


_SMEM_BYTES = _h._SMEM_BYTES


def pick_config(m: int, n: int, kp: int, group: int, sms: int = 132) -> W4A16HopperConfig:
  """The config the wrapper runs for an [m, kp] x [n, kp] product (H100 / H200 timings: BENCHMARKS.md,
  issue 8).

  Small m (<= 64; the wrapper sends m <= 16 to its Triton kernel) take the narrowest token tile and split K
  until the work items reach 1.5 waves of SMs; prefill sizes take 64 x 128 tiles to m = 256, 64 x 256 on
  large layers to m = 2048, else 128 x 128 (64 x 128 where N is not a multiple of 256)."""
  if m <= 64:
    tm = 16 if m <= 16 else 32 if m <= 32 else 64
    tiles = (n // 128) * -(-m // tm)
    groups = kp // group
    splits = [d for d in range(1, 17) if groups % d == 0]
    split = next((d for d in splits if 2 * tiles * d >= 3 * sms), splits[-1])  # 1.5 waves: best at M = 32-64
    return W4A16HopperConfig(tile_n=64, tile_m=tm, stages=6, epi_tile_n=tm, split_k=split)
  if m <= 256:
    return W4A16HopperConfig(tile_n=64, tile_m=128, stages=4)
  if m <= 2048 and n * kp >= 8192 * 8192:
    return W4A16HopperConfig(tile_n=64, tile_m=256, stages=3)
  return W4A16HopperConfig(tile_n=128 if n % 256 == 0 else 64, tile_m=128, stages=4)


def fit_stages(cfg: W4A16HopperConfig, out_size: int = 2) -> W4A16HopperConfig:
  """`cfg` with as many pipeline stages (<= cfg.stages) as fit shared memory; ValueError below 2. Buffers
  count rounded up to 1 KB, as w8a8_matmul_hopper's model of Mosaic GPU's allocator."""
  kb = lambda b: -(-b // 1024) * 1024
  tn, tm = cfg.tile_n, cfg.tile_m
  step = 4 * kb(tm * QUARTER * 2) + kb(2 * tn * QUARTER * 2) + 2 * kb(2 * tn * 2)  # x quarters, words, scale, center
  epi_m, epi_n, slots = _h._epi_dims(_out_cfg(cfg))
  fixed = kb(2 * slots * epi_m * epi_n * out_size) + 512
  stages = max((s for s in range(2, cfg.stages + 1) if s * step + fixed <= _SMEM_BYTES), default=None)
  if stages is None:
    raise ValueError(f"w4a16_matmul_hopper: {cfg} does not fit shared memory at 2 stages")
  return dataclasses.replace(cfg, stages=stages)


def _out_cfg(cfg: W4A16HopperConfig):
  """The output tile [tile_n, tile_m] (yT) in the terms of w8a8_matmul_hopper's epilogue helpers."""
  return _h.HopperConfig(tile_m=cfg.tile_n, tile_n=cfg.tile_m, epi_tile_n=cfg.epi_tile_n)


def _kernel(x_gmem, w_gmem, s_gmem, c_gmem, out_gmem, *, cfg: W4A16HopperConfig, blocks_per_group: int):
  plgpu = _plgpu()
  m, kp = x_gmem.shape
  n = w_gmem.shape[0]
  tn, tm = cfg.tile_n, cfg.tile_m
  cta_n = 2 * tn
  splits = cfg.split_k
  m_iters, n_iters, k_iters = m // tm, n // cta_n, kp // PACK_BLOCK // splits  # k_iters: one split's
  groups = k_iters // blocks_per_group
  q_transforms = (plgpu.TilingTransform((8, QUARTER)), plgpu.SwizzleTransform(2 * QUARTER))  # 64-byte rows

  def spec(shape, index, transforms=()):
    return plgpu.BlockSpec(shape, index, transforms=transforms, memory_space=plgpu.SMEM)

  in_specs = [spec((tm, QUARTER), functools.partial(lambda q, kk: (0, 4 * kk + q), q), q_transforms)
              for q in range(4)]
  in_specs += [spec((cta_n, QUARTER), lambda kk: (0, kk), q_transforms),       # packed words [cta_n, 32] u16
               spec((1, cta_n), lambda kk: (kk // blocks_per_group, 0)),      # scale [1, cta_n] bf16
               spec((1, cta_n), lambda kk: (kk // blocks_per_group, 0))]      # 128 + zero [1, cta_n] bf16

  def get_pipeline(body, compute_context):
    return plgpu.emit_pipeline_warp_specialized(
        body, grid=(k_iters,), memory_registers=40, in_specs=in_specs, wg_axis="wg", num_compute_wgs=2,
        max_concurrent_steps=cfg.stages, compute_context=compute_context)

  ignore = lambda *_, **__: None

  def pipeline_args(m_start, n_start, split):
    x_rows = x_gmem.at[pl.ds(m_start, tm), pl.ds(split * k_iters * PACK_BLOCK, k_iters * PACK_BLOCK)]
    cols = pl.ds(n_start, cta_n)
    w_cols = pl.ds(split * k_iters * QUARTER, k_iters * QUARTER)
    g_rows = pl.ds(split * groups, groups)
    return (x_rows,) * 4 + (w_gmem.at[cols, w_cols], s_gmem.at[g_rows, cols], c_gmem.at[g_rows, cols])

  ocfg = _out_cfg(cfg)

  @functools.partial(
      pl.run_scoped,
      pipeline_allocs=get_pipeline(ignore, ignore).get_allocations(*pipeline_args(0, 0, 0)),
      out_smem=_h.output_staging(ocfg, out_gmem.dtype),
      collective_axes="wg",
  )
  def _scope(pipeline_allocs, out_smem):
    wg = lax.axis_index("wg")

    @plgpu.nd_loop((m_iters * n_iters * splits,), collective_axes="sm")
    def _mn_loop(info):
      (lin,) = info.index
      split = lin % splits  # the splits of one output tile run side by side (they share x's rows)
      mi, ni = plgpu.planar_snake(lin // splits, (m_iters, n_iters), 1, cfg.grid_tile_width)
      m_sl = pl.ds(mi * tm, tm)
      n_sl = pl.ds(ni * cta_n + wg * tn, tn)  # this warpgroup's weight rows

      def compute_context(eval_pipeline):
        @functools.partial(pl.run_scoped, acc_ref=plgpu.ACC((tn, tm), jnp.float32))
        def _acc_scope(acc_ref):
          eval_pipeline(acc_ref)
          _h.store_tile(acc_ref[...], out_smem, out_gmem.at[split, n_sl, m_sl], wg, ocfg)

      def body(_, xq0, xq1, xq2, xq3, w_smem, s_smem, c_smem, acc_ref):
        rows = pl.ds(wg * tn, tn)
        words = w_smem[rows, :]  # [tn, 32] uint16
        scale = lax.broadcast_in_dim(s_smem[0, rows], (tn, QUARTER), [0])
        center = lax.broadcast_in_dim(c_smem[0, rows], (tn, QUARTER), [0])
        for q, xq in enumerate((xq0, xq1, xq2, xq3)):
          nib = lax.shift_right_logical(words, jnp.uint16(4 * q)) & jnp.uint16(0xF) if q else words & jnp.uint16(0xF)
          v = lax.bitcast_convert_type(nib | jnp.uint16(_MAGIC), jnp.bfloat16)  # 128 + q, exact
          plgpu.wgmma(acc_ref, (v - center) * scale, plgpu.transpose_ref(xq, (1, 0)))
        plgpu.wgmma_wait(0)
        return acc_ref

      get_pipeline(body, compute_context)(*pipeline_args(mi * tm, ni * cta_n, split), allocations=pipeline_allocs)

  plgpu.wait_smem_to_gmem(0, wait_read_only=True)


_STATIC = ("out_dtype", "config", "interpret", "num_sms")


@functools.partial(jax.jit, static_argnames=_STATIC)
def w4a16_matmul_hopper(x, w_q, scale, zero, bias=None, *, out_dtype=None,
                        config: W4A16HopperConfig = W4A16HopperConfig(), interpret: bool = False,
                        num_sms: int | None = None):
  """x bf16 [M, K], w_q uint8 [N, Kp/2] (int4_pack asymmetric order), scale / zero [G, N], bias [N] or
  None -> [M, N] out_dtype (default bf16); the function of `w4a16_matmul` (W rounded to bf16 first)."""
  if x.dtype != jnp.bfloat16:
    raise ValueError(f"w4a16_matmul_hopper: x must be bf16 (the magic-number dequant is bf16's), got {x.dtype}")
  n, kh = w_q.shape
  kp = 2 * kh
  g = scale.shape[0]
  m, k = x.shape
  if k > kp or scale.shape != (g, n) or zero.shape != (g, n) or g == 0 or kp % g:
    raise ValueError(f"w4a16_matmul_hopper: x.shape={x.shape}, w_q.shape={w_q.shape}, scale.shape={scale.shape}, "
                     f"zero.shape={zero.shape}; expected K <= Kp={kp} and scale / zero (G, {n}) with G dividing Kp")
  check_x_k("x", x.shape, kp, max(kp // g, PACK_BLOCK))  # quantize_w4_asym pads K to the group
  if not supported(n, kp, kp // g, config):
    raise ValueError(f"w4a16_matmul_hopper: N={n} must divide by {2 * config.tile_n}, the group {kp // g} by "
                     f"{PACK_BLOCK} and the G={g} groups by split_k={config.split_k}")
  if k < kp:
    x = jnp.pad(x, ((0, 0), (0, kp - k)))
  mp = pl.cdiv(m, config.tile_m) * config.tile_m
  if mp != m:
    x = jnp.pad(x, ((0, mp - m), (0, 0)))
  words = lax.bitcast_convert_type(w_q.reshape(n, kp // 4, 2), jnp.uint16)  # [N, Kp/4]: a free view
  s16 = scale.astype(jnp.bfloat16)
  c16 = (zero.astype(jnp.float32) + 128.0).astype(jnp.bfloat16)  # integers 128..143: exact
  out_dtype = out_dtype or jnp.bfloat16
  # The bias goes into XLA's transpose of the output (one fusion); the kernel then writes float32, so
  # that y is rounded once.
  kernel_out = out_dtype if bias is None and config.split_k == 1 else jnp.float32
  cfg = fit_stages(config, jnp.dtype(kernel_out).itemsize)
  body = functools.partial(_kernel, cfg=cfg, blocks_per_group=(kp // g) // PACK_BLOCK)
  y_t = _h.launch(body, (cfg.split_k, n, mp), kernel_out, num_sms or _h.device_sm_count(),
                  interpret)(x, words, s16, c16)  # [S, N, Mp]
  y = y_t[:, :, :m].sum(axis=0).T  # [M, N]
  if bias is not None:
    y = y + bias.astype(jnp.float32)[None, :]
  return y.astype(out_dtype)
