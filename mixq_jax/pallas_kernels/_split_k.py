"""Split-K partial sums reduced inside the GEMM kernel: the last program of a tile to finish sums them.

Shape letters: S K slices, M rows, N columns, T output tiles.

With split-K, the S programs of one output tile each write a partial [bm, bn] of their K slice. The
XLA form sums the partials [S, M, N] in a second kernel (one more launch per GEMM call, which is
most of the cost of a small decode GEMM beyond its weight bytes). Here each program, after storing
its partial, bumps the tile's arrival counter with an atomic add; the program that arrives last
(old count = S - 1) reads the S partials back, applies the epilogue (row scale, column scale, bias,
cast) and writes the output. The counters [T] int32 start at zero on every call (an XLA memset).

Memory order: every thread of the program stores its share of the partial, a CTA barrier
(`debug_barrier`) orders those stores before the counter's atomic add, which is acquire-release at
GPU scope (JAX's Triton lowering); the last program's loads of the other partials come after its own
acquiring atomic and are `volatile` (no stale L1 line). Interpret mode runs the grid in order, one
program at a time, so there the slice S - 1 is always the last to arrive and no barrier is needed.
"""

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mixq_jax.pallas_kernels._triton import compiler_params, plgpu


def split_k_pallas_call(kernel_fn, in_specs, args, *, ids, m, n, bm, bn, num_tiles, split_k, out_dtype,
                        cfg, interpret, name, partial_dtype, row_scale=None, partial_scale=None, bias=None):
  """pallas_call of a tiled GEMM kernel whose programs (tile i, slice s) write their partial to the
  `o_ref` they are given (a [bm, bn] view of slice s), reduced in the kernel as the module says.
  Returns y [M, N] out_dtype."""
  extra = [(row_scale, (bm,), lambda i, s: (ids(i)[0],)),
           (partial_scale, (bn,), lambda i, s: (ids(i)[1],)),
           (bias, (bn,), lambda i, s: (ids(i)[1],))]
  has = [a is not None for a, _, _ in extra]
  n_kernel_in = len(args)
  in_specs = list(in_specs) + [pl.BlockSpec(shape, f) for a, shape, f in extra if a is not None]
  args = list(args) + [a for a, _, _ in extra if a is not None]
  n_in = len(args)
  in_specs.append(pl.BlockSpec((num_tiles,), lambda i, s: (0,)))
  args.append(jnp.zeros((num_tiles,), jnp.int32))
  ragged = m % bm != 0

  def kernel(*refs):
    ins, extra_refs = refs[:n_kernel_in], iter(refs[n_kernel_in:n_in])
    rs_ref, ps_ref, b_ref = (next(extra_refs) if h else None for h in has)
    cnt_ref, y_ref, part_ref, _ = refs[n_in:]  # counters in, y [bm, bn], partials [S, bm, bn], counters out
    kernel_fn(*ins, part_ref.at[pl.program_id(1)])
    tile = pl.program_id(0)
    if not interpret:
      plgpu.debug_barrier()
    arrived = plgpu.atomic_add(cnt_ref, (jnp.asarray(tile, jnp.int32),), jnp.int32(1))
    pid_m = ids(tile)[0]
    rmask = ((pid_m * bm + jnp.arange(bm)) < m)[:, None] if ragged else None  # [bm, 1]

    @pl.when(arrived == split_k - 1)
    def _():
      total = None
      for j in range(split_k):
        part = plgpu.load(part_ref.at[jnp.int32(j)], volatile=not interpret)  # rows past M: padding
        total = part if total is None else total + part  # int32 partials sum exactly
      y = total.astype(jnp.float32)
      if rs_ref is not None:
        rs = plgpu.load(rs_ref.at[:], mask=rmask[:, 0], other=0) if ragged else rs_ref[...]
        y = y * rs[:, None]
      if ps_ref is not None:
        y = y * ps_ref[...][None, :]
      if b_ref is not None:
        y = y + b_ref[...].astype(jnp.float32)[None, :]
      y = y.astype(y_ref.dtype)
      if ragged:
        plgpu.store(y_ref.at[:, :], y, mask=rmask)
      else:
        y_ref[...] = y

  y, _, _ = pl.pallas_call(
      kernel,
      grid=(num_tiles, split_k),
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((bm, bn), lambda i, s: ids(i)),
                 pl.BlockSpec((split_k, bm, bn), lambda i, s: (0, *ids(i))),
                 pl.BlockSpec((num_tiles,), lambda i, s: (0,))],
      out_shape=[jax.ShapeDtypeStruct((m, n), out_dtype),
                 jax.ShapeDtypeStruct((split_k, pl.cdiv(m, bm) * bm, n), partial_dtype),
                 jax.ShapeDtypeStruct((num_tiles,), jnp.int32)],
      input_output_aliases={n_in: 2},
      compiler_params=compiler_params(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
      interpret=interpret,
      name=name,
  )(*args)
  return y
