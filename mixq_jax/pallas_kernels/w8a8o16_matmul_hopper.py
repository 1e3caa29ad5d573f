"""MixQ W8A8O16 for Hopper (sm_90) in Pallas Mosaic GPU: the 16-bit outlier product as extra K steps.

Shape letters: M tokens, N output features, K input features, C outlier columns (capacity).

    y = (x_q @ w_q.T) s_x[:, None] s_w[None, :] (+ u v^T) (+ bias) + x_o @ w_o.T   # = w8a8o16_matmul

Exact vs rounded: the int32 accumulator is exact; x_o and w_o are 16-bit (bf16, or fp16 if x_o is fp16)
with a float32 accumulate; the epilogue is float32, rounded once to out_dtype.

Why its own kernel: the first W8A8O16 on Hopper (the W8A8 kernel with the outlier tiles of each
output tile in their own shared memory, 96 KB at C = 128) had room for 128 x 64 tiles and 3 stages
only, and measured 1.16-1.36x bf16 at M = 4096 against W8A8's 1.66-1.86x (H100, BENCHMARKS.md). Here the
outlier tiles travel through the int8 pipeline's own buffers: a bf16 [rows, 64] tile has the bytes of
an int8 [rows, 128] tile, so the C outlier columns are C / 64 more steps of the same TMA pipeline,
written and read through a bf16 view of the stage buffers (`plgpu.RefUnion`). After the int8 steps the
consumer scales its int32 accumulator to float32, and the outlier wgmmas accumulate into that result
(`plgpu.ACC.init`), so the kernel keeps W8A8's tiling, depth and register budget.

The pipeline is written out by hand (one producer warpgroup, two consumer warpgroups, one load and one
consumed barrier per stage) instead of `emit_pipeline_warp_specialized`: a step here is int8 or bf16
depending on its index, and the producer runs straight on into the next output tile's steps while the
consumers finish the epilogue (the library pipeline drains at the end of every output tile).

Limits (`w8a8o16_matmul` routes elsewhere otherwise): sm_90, K % tile_k == 0, N % (2 tile_n) == 0;
M is padded to the tile here. Runs on CPU in Mosaic GPU interpret mode (separate bf16 buffers and a
second accumulator there: the interpreter has neither aliased buffers nor run_state).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mixq_jax.pallas_kernels.w8a8_matmul_hopper import (HopperConfig, _fit_smem, _plgpu, device_sm_count, launch,
                                                        output_staging, pad_rows, store_tile, supported)


def _kernel(x_gmem, sx_gmem, w_gmem, sw_gmem, b_gmem, xo_gmem, wo_gmem, u_gmem, v_gmem, out_gmem, *,
            cfg: HopperConfig, interpret: bool):
  plgpu = _plgpu()
  m, k = x_gmem.shape
  n = w_gmem.shape[0]
  tm, tn, tk, ns = cfg.tile_m, cfg.tile_n, cfg.tile_k, cfg.stages
  cta_n = 2 * tn
  m_iters, n_iters, k_iters = m // tm, n // cta_n, k // tk
  ow = tk // 2  # 16-bit columns per outlier step: the bytes of one int8 step
  o_iters = 0 if xo_gmem is None else xo_gmem.shape[1] // ow
  o_dtype = None if xo_gmem is None else xo_gmem.dtype  # bf16 or fp16
  steps = k_iters + o_iters  # pipeline steps per output tile
  t8 = (plgpu.TilingTransform((8, tk)), plgpu.SwizzleTransform(tk))
  t16 = (plgpu.TilingTransform((8, ow)), plgpu.SwizzleTransform(tk))
  # The epilogue's vectors: (name, gmem ref, length, broadcast dim of the [tm, tn] tile)
  vecs = [("sx", sx_gmem, tm, 0), ("sw", sw_gmem, tn, 1), ("b", b_gmem, tn, 1), ("u", u_gmem, tm, 0),
          ("v", v_gmem, tn, 1)]
  vecs = [v for v in vecs if v[1] is not None]
  n_vec = len(vecs)

  def stage_buffers(rows):  # int8 [stages, rows, tk] and its 16-bit view [stages, rows, ow]
    b8 = plgpu.SMEM((ns, rows, tk), jnp.int8, transforms=t8)
    if not o_iters:
      return b8
    b16 = plgpu.SMEM((ns, rows, ow), o_dtype, transforms=t16)
    return (b8, b16) if interpret else plgpu.RefUnion(b8, b16)

  def each_tile(body):
    """Runs body(mi, ni, base) over this SM's output tiles (snake order), base = the tile's first global
    pipeline step. The producer and the consumers both walk them so: the barriers rely on the same order."""
    @plgpu.nd_loop((m_iters * n_iters,), collective_axes="sm")
    def _tiles(info):
      mi, ni = plgpu.planar_snake(info.index[0], (m_iters, n_iters), 1, cfg.grid_tile_width)
      body(mi, ni, info.local_index * steps)

  def views(buf):
    return (buf, None) if not o_iters else tuple(buf)

  @functools.partial(
      pl.run_scoped,
      x_buf=stage_buffers(tm),
      w_buf=stage_buffers(cta_n),
      out_smem=output_staging(cfg, out_gmem.dtype),
      vec_smem=[plgpu.SMEM((2, size), jnp.float32) for _, _, size, _ in vecs],
      load_bar=plgpu.Barrier(num_arrivals=2, num_barriers=ns),
      consumed_bar=plgpu.Barrier(num_arrivals=2, num_barriers=ns),
      vec_bar=plgpu.Barrier(num_barriers=2 * n_vec),
      collective_axes="wg",
  )
  def _scope(x_buf, w_buf, out_smem, vec_smem, load_bar, consumed_bar, vec_bar):
    wg = lax.axis_index("wg")
    x8, x16 = views(x_buf)
    w8, w16 = views(w_buf)

    @pl.when(wg == 2)
    def _producer():
      if not interpret:
        plgpu.set_max_registers(40, action="decrease")

      @each_tile
      def _fetch_tile(mi, ni, base):
        x_rows, w_rows = pl.ds(mi * tm, tm), pl.ds(ni * cta_n, cta_n)

        def fetch(step, x_src, x_dst, w_src, w_dst):
          g = base + step
          slot = lax.rem(g, ns)

          @pl.when(g >= ns)  # the slot's previous step must be consumed by both warpgroups
          def _():
            plgpu.barrier_wait(consumed_bar.at[slot])

          plgpu.copy_gmem_to_smem(x_src, x_dst.at[slot], load_bar.at[slot])
          plgpu.copy_gmem_to_smem(w_src, w_dst.at[slot], load_bar.at[slot])

        @pl.loop(0, k_iters)
        def _k(kk):
          cols = pl.ds(kk * tk, tk)
          fetch(kk, x_gmem.at[x_rows, cols], x8, w_gmem.at[w_rows, cols], w8)

        for j in range(o_iters):  # the outlier columns, through the 16-bit view of the same buffers
          cols = pl.ds(j * ow, ow)
          fetch(k_iters + j, xo_gmem.at[x_rows, cols], x16, wo_gmem.at[w_rows, cols], w16)

      # Observe the last steps' consumption too, so no barrier is left mid-phase when the scope ends.
      tiles, sm, sms = m_iters * n_iters, lax.axis_index("sm"), lax.axis_size("sm")
      total = (tiles // sms + (sm < tiles % sms).astype(jnp.int32)) * steps

      @pl.loop(jnp.maximum(total - ns, 0), total)
      def _drain(g):
        plgpu.barrier_wait(consumed_bar.at[lax.rem(g, ns)])

    @pl.when(wg < 2)
    def _consumer():
      if not interpret:
        plgpu.set_max_registers(232, action="increase")

      @each_tile
      def _compute_tile(mi, ni, base):
        m_sl = pl.ds(mi * tm, tm)
        n_sl = pl.ds(ni * cta_n + wg * tn, tn)  # this warpgroup's columns
        w_cols = pl.ds(wg * tn, tn)
        # The epilogue's vectors travel by TMA while the main loop runs.
        for j, (_, src, _, dim) in enumerate(vecs):
          plgpu.copy_gmem_to_smem(src.at[n_sl if dim else m_sl], vec_smem[j].at[wg], vec_bar.at[wg * n_vec + j])

        def step(s, a_buf, b_buf, acc_ref):
          slot = lax.rem(base + s, ns)
          plgpu.barrier_wait(load_bar.at[slot])
          plgpu.wgmma(acc_ref, a_buf.at[slot], plgpu.transpose_ref(b_buf.at[slot, w_cols], (1, 0)))
          plgpu.wgmma_wait(0)
          plgpu.barrier_arrive(consumed_bar.at[slot])

        def int8_steps(acc_ref):
          if not cfg.delay_release:
            @pl.loop(0, k_iters)
            def _k(kk):
              step(kk, x8, w8, acc_ref)

            return acc_ref[...]

          # delay_release 1: one wgmma stays in flight, so a step's buffers are released a step later
          @pl.loop(0, k_iters)
          def _k_delayed(kk):
            slot = lax.rem(base + kk, ns)
            plgpu.barrier_wait(load_bar.at[slot])
            plgpu.wgmma(acc_ref, x8.at[slot], plgpu.transpose_ref(w8.at[slot, w_cols], (1, 0)))
            plgpu.wgmma_wait(1)

            @pl.when(kk > 0)
            def _():
              plgpu.barrier_arrive(consumed_bar.at[lax.rem(base + kk - 1, ns)])

          plgpu.wgmma_wait(0)
          plgpu.barrier_arrive(consumed_bar.at[lax.rem(base + k_iters - 1, ns)])
          return acc_ref[...]

        def outlier_steps(acc_ref):
          for j in range(o_iters):
            step(k_iters + j, x16, w16, acc_ref)

        acc = pl.run_scoped(int8_steps, plgpu.ACC((tm, tn), jnp.int32))
        for j in range(n_vec):
          plgpu.barrier_wait(vec_bar.at[wg * n_vec + j])
        vec = {name: lax.broadcast_in_dim(ref[wg], (tm, tn), [dim])
               for (name, _, _, dim), ref in zip(vecs, vec_smem)}
        y = acc.astype(jnp.float32) * vec["sx"] * vec["sw"]
        if "u" in vec:
          y = y + vec["u"] * vec["v"]
        if "b" in vec:
          y = y + vec["b"]
        if o_iters and interpret:  # a second accumulator (no run_state in the interpreter)
          def outlier_acc(acc_o):
            outlier_steps(acc_o)
            return acc_o[...]

          y = y + pl.run_scoped(outlier_acc, plgpu.ACC((tm, tn), jnp.float32))
        elif o_iters:  # the outlier wgmmas accumulate into the dequantized result itself
          y = pl.run_state(outlier_steps)(plgpu.ACC.init(y))
        store_tile(y, out_smem, out_gmem.at[m_sl, n_sl], wg, cfg)

      plgpu.wait_smem_to_gmem(0, wait_read_only=True)


_STATIC = ("out_dtype", "config", "interpret", "num_sms")


@functools.partial(jax.jit, static_argnames=_STATIC)
def w8a8o16_matmul_hopper(x_q, s_x, w_q, s_w, x_o=None, w_o=None, outlier_count=None, bias=None, u=None, v=None,
                          *, out_dtype=jnp.bfloat16, config: HopperConfig = HopperConfig(), interpret: bool = False,
                          num_sms: int | None = None):
  """x_q int8 [M, K], s_x f32 [M], w_q int8 [N, K], s_w f32 [N]; x_o [M, C], w_o [N, C] 16-bit with
  slots >= outlier_count ignored (all three or none: without them this is W8A8); bias [N]; u [M], v [N]
  float32 (both or neither): QUIK's rank-1 term. -> [M, N] out_dtype."""
  m, k = x_q.shape
  n = w_q.shape[0]
  if (x_o is None) != (w_o is None) or (x_o is None) != (outlier_count is None):
    raise ValueError("w8a8o16_matmul_hopper: pass x_o, w_o and outlier_count together, or none")
  if (u is None) != (v is None):
    raise ValueError("w8a8o16_matmul_hopper: pass both u [M] and v [N] (the rank-1 term), or neither")
  if config.delay_release not in (0, 1) or config.stages <= config.delay_release:
    raise ValueError(f"w8a8o16_matmul_hopper: delay_release={config.delay_release} must be 0 or 1 and below "
                     f"stages={config.stages}")
  if not supported(m, n, k, config):
    raise ValueError(f"w8a8o16_matmul_hopper: N={n} must divide by {2 * config.tile_n} and K={k} by "
                     f"tile_k={config.tile_k}")
  x_q, s_x, mp = pad_rows(x_q, s_x, config.tile_m)
  if u is not None:
    u, v = jnp.pad(u.astype(jnp.float32), (0, mp - m)), v.astype(jnp.float32)
  b = None if bias is None else bias.astype(jnp.float32)
  if x_o is not None:
    ow = config.tile_k // 2
    c = x_o.shape[1]
    cp = pl.cdiv(c, ow) * ow  # whole steps; zero columns add nothing
    valid = jnp.arange(cp) < jnp.reshape(outlier_count, ())
    # Slots past the count may hold anything (NaN too): zero them in both operands.
    o_dtype = x_o.dtype if x_o.dtype in (jnp.bfloat16, jnp.float16) else jnp.bfloat16  # a 16-bit wgmma operand
    x_o = jnp.where(valid[None, :], jnp.pad(x_o, ((0, mp - m), (0, cp - c))), 0).astype(o_dtype)
    w_o = jnp.where(valid[None, :], jnp.pad(w_o, ((0, 0), (0, cp - c))), 0).astype(o_dtype)
  fitted = _fit_smem(config, jnp.dtype(out_dtype).itemsize, bias is not None, u is not None)
  if fitted is None:
    raise ValueError(f"w8a8o16_matmul_hopper: {config} does not fit shared memory")
  body = functools.partial(_kernel, cfg=fitted, interpret=interpret)
  y = launch(body, (mp, n), out_dtype, num_sms or device_sm_count(), interpret)(x_q, s_x, w_q, s_w, b, x_o, w_o, u, v)
  return y[:m] if mp != m else y
