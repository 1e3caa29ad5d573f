"""W8A8 matmul for Hopper (sm_90) in Pallas Mosaic GPU: TMA loads, warp-specialized pipeline, int8 wgmma.

Shape letters: M tokens, N output features, K input features.

    y = (x_q @ w_q.T) * s_x[:, None] * s_w[None, :] (+ bias)      # the same function as w8a8_matmul

Why a second kernel: the Triton-backend tile loop loads tiles with pointer loads from every warp,
which caps int8 at ~47% of the H100 tensor-core peak (bench/NOTES_gemm.md). Here one producer
warpgroup streams x and w tiles into swizzled shared memory with the TMA engine while two consumer
warpgroups issue int8 wgmma (s32 accumulate, both operands K-major as the instruction requires);
the kernel is persistent (one CTA per SM walking output tiles in a snake order so that weight
tiles stay in L2). The structure follows JAX's `hopper_matmul_mgpu` example, adapted to int8
operands, an [N, K] weight and the dequant epilogue.

MixQ's W8A8O16 on Hopper is `w8a8o16_matmul_hopper.py` (its outlier columns run as extra pipeline steps).
`w4a8_matmul_hopper` is the same kernel on packed int4 weights (int4_pack's layout): the pipeline
streams the packed bytes, and each consumer warpgroup unpacks its tile to int8 in shared memory (two
staging slots, so one step's unpack overlaps the previous step's wgmmas) before wgmma-ing each K half.

Limits (the wrapper `w8a8_matmul` routes elsewhere otherwise): sm_90, K % tile_k == 0,
N % (2 * tile_n) == 0; M is padded to the tile here. Runs on CPU in Mosaic GPU interpret mode.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mixq_jax.pallas_kernels.int4_pack import nibble_bytes_to_int8, unpack_halves


@dataclasses.dataclass(frozen=True)
class HopperConfig:
  tile_m: int = 128       # rows per consumer warpgroup (the CTA tile is tile_m x 2 * tile_n)
  tile_n: int = 128       # columns per consumer warpgroup
  tile_k: int = 128       # int8 bytes per row: 128 (128-byte swizzle) or 64 (64-byte swizzle, half the smem)
  stages: int = 4         # TMA pipeline depth (max_concurrent_steps)
  grid_tile_width: int = 8  # snake-order band width, in tiles
  epi_tile_n: int = 64
  delay_release: int = 0  # 1: keep one wgmma in flight across K steps (its tiles freed a step later)


def _plgpu():
  from jax.experimental.pallas import mosaic_gpu as plgpu  # noqa: PLC0415

  return plgpu


def supported(m: int, n: int, k: int, cfg: HopperConfig = HopperConfig()) -> bool:
  """Whether the shape fits this kernel (the device check is the caller's)."""
  del m
  if cfg.tile_k not in (64, 128):
    raise ValueError(f"HopperConfig.tile_k must be 64 or 128 (one int8 swizzle row), got {cfg.tile_k}")
  return k % cfg.tile_k == 0 and n % (2 * cfg.tile_n) == 0


def _epi_dims(cfg: HopperConfig):
  """(epi_m, epi_n, slots): the epilogue's output tiles and staging slots per warpgroup."""
  epi_m, epi_n = min(64, cfg.tile_m), min(cfg.epi_tile_n, cfg.tile_n)
  return epi_m, epi_n, min(2, (cfg.tile_m * cfg.tile_n) // (epi_m * epi_n))


def output_staging(cfg: HopperConfig, out_dtype):
  """Shared-memory staging of the epilogue, [2 warpgroups, slots, epi_m, epi_n], swizzled for TMA stores."""
  plgpu = _plgpu()
  epi_m, epi_n, slots = _epi_dims(cfg)
  size = jnp.dtype(out_dtype).itemsize
  swizzle = plgpu.find_swizzle(epi_n * size * 8)
  transforms = (plgpu.TilingTransform((8, swizzle // size)), plgpu.SwizzleTransform(swizzle))
  return plgpu.SMEM((2, slots, epi_m, epi_n), out_dtype, transforms=transforms)


def store_tile(y, out_smem, out_tile, wg, cfg: HopperConfig):
  """y [tile_m, tile_n] -> out_tile (its gmem ref) by TMA, through this warpgroup's staging slots of
  `output_staging`; a slot is rewritten once its previous store has read it."""
  plgpu = _plgpu()
  epi_m, epi_n, slots = _epi_dims(cfg)
  y = y.astype(out_smem.dtype)
  plgpu.wait_smem_to_gmem(0, wait_read_only=True)
  for ei in range(cfg.tile_m // epi_m):
    for ej in range(cfg.tile_n // epi_n):
      slot = (ei * (cfg.tile_n // epi_n) + ej) % slots
      plgpu.wait_smem_to_gmem(1, wait_read_only=True)
      out_smem[wg, slot] = y[ei * epi_m:(ei + 1) * epi_m, ej * epi_n:(ej + 1) * epi_n]
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(out_smem.at[wg, slot], out_tile.at[pl.ds(ei * epi_m, epi_m), pl.ds(ej * epi_n, epi_n)])


def _kernel(x_gmem, sx_gmem, w_gmem, sw_gmem, b_gmem, out_gmem, *,
            cfg: HopperConfig, num_sms: int, w_int4: bool = False, word_unpack: bool = True):
  plgpu = _plgpu()
  m, k = x_gmem.shape
  n = w_gmem.shape[0]
  tm, tn, tk = cfg.tile_m, cfg.tile_n, cfg.tile_k
  cta_n = 2 * tn
  m_iters, n_iters, k_iters = m // tm, n // cta_n, k // tk
  in_transforms = (plgpu.TilingTransform((8, tk)), plgpu.SwizzleTransform(tk))  # one swizzle atom per row
  half = tk // 2
  half_transforms = (plgpu.TilingTransform((8, half)), plgpu.SwizzleTransform(half))
  word_transforms = (plgpu.TilingTransform((8, half // 4)), plgpu.SwizzleTransform(half))  # the same bytes as uint32

  delay = 1 if w_int4 else cfg.delay_release  # the int4 body keeps one wgmma in flight across steps

  def spec(shape, index, transforms):
    return plgpu.BlockSpec(shape, index, transforms=transforms, memory_space=plgpu.SMEM, delay_release=delay)

  if w_int4:  # packed weights (int4_pack layout, one pack block per K step): x's two halves, w's bytes
    in_specs = [spec((tm, half), lambda kk: (0, 2 * kk), half_transforms),
                spec((tm, half), lambda kk: (0, 2 * kk + 1), half_transforms),
                spec((cta_n, half // 4), lambda kk: (0, kk), word_transforms) if word_unpack
                else spec((cta_n, half), lambda kk: (0, kk), half_transforms)]
  else:
    in_specs = [spec((tm, tk), lambda kk: (0, kk), in_transforms), spec((cta_n, tk), lambda kk: (0, kk), in_transforms)]

  def get_pipeline(body, compute_context):
    return plgpu.emit_pipeline_warp_specialized(
        body,
        grid=(k_iters,),
        memory_registers=40,
        in_specs=in_specs,
        wg_axis="wg",
        num_compute_wgs=2,
        max_concurrent_steps=cfg.stages,
        compute_context=compute_context,
    )

  ignore = lambda *_, **__: None

  def pipeline_args(m_start, n_start):
    x_rows, w_rows = x_gmem.at[pl.ds(m_start, tm), :], w_gmem.at[pl.ds(n_start, cta_n), :]
    return (x_rows, x_rows, w_rows) if w_int4 else (x_rows, w_rows)

  n_vec = 3 if b_gmem is not None else 2

  @functools.partial(
      pl.run_scoped,
      pipeline_allocs=get_pipeline(ignore, ignore).get_allocations(*pipeline_args(0, 0)),
      # The unpacked halves [wg, slot, half]: written as uint32 words, read by the wgmma as int8 (two
      # views of one buffer, the same swizzled 64-byte rows).
      wu_smem=(None if not w_int4 else plgpu.SMEM((2, 2, 2, tn, half), jnp.int8, transforms=half_transforms)
               if not word_unpack else
               plgpu.RefUnion(plgpu.SMEM((2, 2, 2, tn, half // 4), jnp.uint32, transforms=word_transforms),
                              plgpu.SMEM((2, 2, 2, tn, half), jnp.int8, transforms=half_transforms))),
      out_smem=output_staging(cfg, out_gmem.dtype),
      sx_smem=plgpu.SMEM((2, tm), jnp.float32),
      sw_smem=plgpu.SMEM((2, tn), jnp.float32),
      b_smem=plgpu.SMEM((2, tn), jnp.float32) if b_gmem is not None else None,
      vec_bar=plgpu.Barrier(num_barriers=2 * n_vec),
      collective_axes="wg",
  )
  def _scope(pipeline_allocs, wu_smem, out_smem, sx_smem, sw_smem, b_smem, vec_bar):
    wg = lax.axis_index("wg")

    @plgpu.nd_loop((m_iters * n_iters,), collective_axes="sm")
    def _mn_loop(info):
      (lin,) = info.index
      mi, ni = plgpu.planar_snake(lin, (m_iters, n_iters), 1, cfg.grid_tile_width)
      m_sl = pl.ds(mi * tm, tm)
      n_sl = pl.ds(ni * cta_n + wg * tn, tn)  # this warpgroup's columns

      def compute_context(eval_pipeline):
        # The epilogue's vectors travel by TMA while the main loop runs.
        vecs = [(sx_gmem.at[m_sl], sx_smem), (sw_gmem.at[n_sl], sw_smem)]
        if b_gmem is not None:
          vecs.append((b_gmem.at[n_sl], b_smem))
        for j, (src, dst) in enumerate(vecs):
          plgpu.copy_gmem_to_smem(src, dst.at[wg], vec_bar.at[wg * n_vec + j])

        @functools.partial(pl.run_scoped, acc_ref=plgpu.ACC((tm, tn), jnp.int32))
        def _acc_scope(acc_ref):
          eval_pipeline(acc_ref)
          for j in range(n_vec):
            plgpu.barrier_wait(vec_bar.at[wg * n_vec + j])
          y = acc_ref[...].astype(jnp.float32)
          y = y * lax.broadcast_in_dim(sx_smem[wg], (tm, tn), [0])
          y = y * lax.broadcast_in_dim(sw_smem[wg], (tm, tn), [1])
          if b_gmem is not None:
            y = y + lax.broadcast_in_dim(b_smem[wg], (tm, tn), [1])
          store_tile(y, out_smem, out_gmem.at[m_sl, n_sl], wg, cfg)

      def mma_body(_, x_smem, w_smem, acc_ref):
        plgpu.wgmma(acc_ref, x_smem, plgpu.transpose_ref(w_smem.at[pl.ds(wg * tn, tn)], (1, 0)))
        plgpu.wgmma_wait(cfg.delay_release)
        return acc_ref

      def int4_mma_body(idx, xlo_smem, xhi_smem, wp_smem, acc_ref):
        # The packed tile's low / high nibbles are the weight's two K halves (int4_pack): unpack
        # both to exact int8 in registers, stage them in this warpgroup's smem, and wgmma each half
        # against its half of x. Two staging slots by step parity: this step's unpack runs while
        # the last step's wgmmas do.
        slot = lax.rem(idx[0], 2)
        p = wp_smem[pl.ds(wg * tn, tn), :]
        if word_unpack:
          # Mosaic GPU has no 8-bit arithmetic: p is [tn, half / 4] uint32, and each step works on
          # 4 bytes at once (nibble_bytes_to_int8); the words view and the bytes view share memory.
          dst, bytes_ = wu_smem
          nib = jnp.uint32(0x0F0F0F0F)
          halves = [nibble_bytes_to_int8(h) for h in (p & nib, lax.shift_right_logical(p, jnp.uint32(4)) & nib)]
        else:  # the interpreter has no aliased buffers: int8 bytes [tn, half], unpacked byte-wise
          dst = bytes_ = wu_smem
          halves = unpack_halves(p)
        dst[wg, slot, 0], dst[wg, slot, 1] = halves
        plgpu.commit_smem()
        plgpu.wgmma(acc_ref, xlo_smem, plgpu.transpose_ref(bytes_.at[wg, slot, 0], (1, 0)))
        plgpu.wgmma(acc_ref, xhi_smem, plgpu.transpose_ref(bytes_.at[wg, slot, 1], (1, 0)))
        # Only this step's two wgmmas stay in flight: the previous step's are done, so its slot
        # (rewritten next step) and its x tiles (released a step late, delay_release = 1) are free.
        plgpu.wgmma_wait(2)
        return acc_ref

      get_pipeline(int4_mma_body if w_int4 else mma_body, compute_context)(
          *pipeline_args(mi * tm, ni * cta_n), allocations=pipeline_allocs)

  plgpu.wait_smem_to_gmem(0, wait_read_only=True)


_SMEM_BYTES = 227 * 1024  # per block on sm_90


def _fit_smem(cfg: HopperConfig, out_size: int, bias: bool, rank1: bool = False,
              w_int4: bool = False) -> HopperConfig | None:
  """`cfg` with fewer pipeline stages where the buffers would overflow shared memory; None where even
  2 stages do not fit. Each buffer is counted rounded up to 1 KB (the allocator's alignment for
  swizzled tiles), plus 512 B of barriers: this matches the sizes Mosaic GPU reported for the
  128 x 256 W8A8 tiles with bias (tests/bench/test_gemm_hopper.py checks the model against its
  lowering). rank1: QUIK's two vectors (w8a8o16_matmul_hopper); w_int4: the unpacked weights'
  staging (2 warpgroups x 2 slots) and packed weight tiles (w4a8_matmul_hopper)."""
  tm, tn = cfg.tile_m, cfg.tile_n
  kb = lambda b: -(-b // 1024) * 1024
  step = (tm + (tn if w_int4 else 2 * tn)) * cfg.tile_k  # bytes per pipeline stage

  def stages_with(epi_n):  # most pipeline stages (<= cfg.stages, >= 2) that fit, or None
    fixed = (kb(2 * 2 * min(64, tm) * min(epi_n, tn) * out_size) + kb(2 * tm * 4) + kb(2 * tn * 4)
             + (kb(2 * tn * 4) if bias else 0) + (kb(2 * tm * 4) + kb(2 * tn * 4) if rank1 else 0) + 512
             + (4 * tn * cfg.tile_k if w_int4 else 0))
    return max((s for s in range(2, cfg.stages + 1) if s * step + fixed <= _SMEM_BYTES), default=None)

  stages = stages_with(cfg.epi_tile_n)
  if cfg.epi_tile_n > 32 and (stages or 0) < min(cfg.stages, 3):
    # Narrower output staging (half the bytes) before a third pipeline stage is lost. Only then: with
    # a bias at 128 x 256, 4 stages at 32 columns measured no faster than 3 at 64 (H100, 2026-12-06:
    # 289.6 against 282.7 us at 11008 x 4096, M = 4096; equal at 4096^2).
    narrow = stages_with(32)
    if narrow is not None and narrow >= 3:
      return dataclasses.replace(cfg, stages=narrow, epi_tile_n=32)
  return None if stages is None else dataclasses.replace(cfg, stages=stages)


def fits(cfg: HopperConfig, out_dtype, bias: bool = False, rank1: bool = False) -> bool:
  """Whether the kernel (or w8a8o16_matmul_hopper, whose outlier columns need no shared memory of their
  own; rank1 = QUIK's vectors) fits shared memory at 2 or more stages."""
  return _fit_smem(cfg, jnp.dtype(out_dtype).itemsize, bias, rank1) is not None


def is_hopper() -> bool:
  """Whether the default device is an sm_90 GPU (H100 / H200), where this kernel runs natively."""
  dev = jax.devices()[0]
  return dev.platform == "gpu" and str(getattr(dev, "compute_capability", "")) in ("9.0", "9.0a")


def on_hopper(interpret: bool, config) -> bool:
  """Whether a wrapper may leave its Triton kernel: a native sm_90 call without an explicit config."""
  return not interpret and config is None and is_hopper()


def device_sm_count() -> int:
  """Streaming multiprocessors of the default device (132 on an H100 SXM)."""
  dev = jax.devices()[0]
  return int(getattr(dev, "core_count", 0) or 132)


_STATIC = ("out_dtype", "config", "interpret", "num_sms")


@functools.partial(jax.jit, static_argnames=_STATIC)
def w8a8_matmul_hopper(x_q, s_x, w_q, s_w, bias=None, *, out_dtype=jnp.bfloat16,
                       config: HopperConfig = HopperConfig(), interpret: bool = False, num_sms: int | None = None):
  """x_q int8 [M, K], s_x f32 [M], w_q int8 [N, K], s_w f32 [N], bias [N] or None -> [M, N] out_dtype."""
  return _call(x_q, s_x, w_q, s_w, bias, out_dtype, config, interpret, num_sms)


@functools.partial(jax.jit, static_argnames=_STATIC)
def w4a8_matmul_hopper(x_q, s_x, w_packed, s_w, bias=None, *, out_dtype=jnp.bfloat16,
                       config: HopperConfig = HopperConfig(), interpret: bool = False, num_sms: int | None = None):
  """w8a8_matmul_hopper on signed int4 weights, packed as int4_pack lays them out (w_packed int8
  [N, K / 2]; x_q int8 [M, K], K a multiple of 128). The kernel streams the packed bytes and unpacks
  each K step's tile to exact int8 in shared memory, so no int8 copy of the weight is made.
  (QQQ's g128 form, q4 * s_g by one word multiply-add per step, measured slower than XLA's unpack
  pass + w8a8_matmul_hopper at every M tried, so it is not offered; BENCHMARKS.md.)"""
  if config.tile_k != 128:
    raise ValueError(f"w4a8_matmul_hopper: tile_k must be 128 (one int4 pack block), got {config.tile_k}")
  if x_q.shape[1] != 2 * w_packed.shape[1]:
    raise ValueError(f"w4a8_matmul_hopper: x_q K={x_q.shape[1]} must be twice w_packed's {w_packed.shape[1]} bytes")
  n, kb = w_packed.shape
  if kb % 4:
    raise ValueError(f"w4a8_matmul_hopper: w_packed has {kb} bytes per row; K must be a multiple of 128")
  if not interpret:  # [N, K / 8] uint32 words for the word-wise unpack (a free bitcast)
    w_packed = lax.bitcast_convert_type(w_packed.view(jnp.uint8).reshape(n, kb // 4, 4), jnp.uint32)
  return _call(x_q, s_x, w_packed, s_w, bias, out_dtype, config, interpret, num_sms, w_int4=True)


def _call(x_q, s_x, w_q, s_w, bias, out_dtype, config, interpret, num_sms, w_int4=False):
  m, k = x_q.shape
  n = w_q.shape[0]
  if not supported(m, n, k, config):
    raise ValueError(f"w8a8_matmul_hopper: N={n} must divide by {2 * config.tile_n} and K={k} by {config.tile_k}")
  x_q, s_x, mp = pad_rows(x_q, s_x, config.tile_m)
  b = None if bias is None else bias.astype(jnp.float32)
  fitted = _fit_smem(config, jnp.dtype(out_dtype).itemsize, bias is not None, w_int4=w_int4)
  if fitted is None:
    raise ValueError(f"w8a8_matmul_hopper: {config} with {jnp.dtype(out_dtype).name} output does not fit shared memory")
  sms = num_sms or device_sm_count()
  body = functools.partial(_kernel, cfg=fitted, num_sms=sms, w_int4=w_int4, word_unpack=not interpret)
  y = launch(body, (mp, n), out_dtype, sms, interpret)(x_q, s_x, w_q, s_w, b)
  return y[:m] if mp != m else y


def pad_rows(x_q, s_x, tile_m: int):
  """Pads x_q [M, K] and s_x [M] with zero rows to whole tiles (the kernels have no row masks); the
  caller slices the output back to M. Returns (x_q, s_x, padded M)."""
  m = x_q.shape[0]
  mp = pl.cdiv(m, tile_m) * tile_m
  if mp != m:
    x_q = jnp.pad(x_q, ((0, mp - m), (0, 0)))
    s_x = jnp.pad(s_x, (0, mp - m))
  return x_q, s_x, mp


def launch(body, out_shape, out_dtype, sms: int, interpret: bool):
  """The persistent Mosaic GPU kernel of `body`: one program per SM, 3 warpgroups (a TMA producer and
  two consumers), in Mosaic GPU's interpreter with `interpret`."""
  plgpu = _plgpu()
  kw = {}
  if interpret:
    from jax._src.pallas.mosaic_gpu.interpret import params as ip  # noqa: PLC0415

    kw["interpret"] = ip.InterpretGPUParams()
  return plgpu.kernel(
      body,
      out_type=jax.ShapeDtypeStruct(out_shape, out_dtype),
      grid=(sms,),
      grid_names=("sm",),
      num_threads=3,
      thread_name="wg",
      compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
      **kw,
  )
