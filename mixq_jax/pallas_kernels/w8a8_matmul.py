"""W8A8 and W8A8O16 (MixQ) matmuls: int8 x int8 -> int32 accumulate, dequant epilogue.

Shape letters: M tokens, N output features, K input features, C outlier capacity.

    w8a8:    y = (x_q @ w_q.T) * s_x[:, None] * s_w[None, :] (+ bias)
    w8a8o16: y = w8a8(...) + x_o @ w_o.T     (the 16-bit outlier product, fused in the same tile)

Weights are int8 [N, K] (K-major): on Hopper this is the layout whose int8 tensor-core path
(wgmma needs both int8 operands K-major) runs; a [K, N] int8 operand measured ~4x slower.
The int32 accumulator is exact; the epilogue is float32 in the order written above, then cast.
"""

import functools
import importlib

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mixq_jax.pallas_kernels import _shapes
from mixq_jax.pallas_kernels import w8a8_matmul_hopper as _hopper
from mixq_jax.pallas_kernels._triton import compiler_params, plgpu
from mixq_jax.pallas_kernels.configs import KernelConfig, select_config

# The module itself: the package re-exports its function of the same name over the attribute.
_hopper_o16 = importlib.import_module("mixq_jax.pallas_kernels.w8a8o16_matmul_hopper")

_NT = (((1,), (1,)), ((), ()))  # contract the K dim of both operands: a [m, k] . b [n, k] -> [m, n]


def _tile_ids(i, num_m, num_n, group_m):
  """Grouped tile order: `group_m` M tiles sweep the N tiles together, so weight tiles hit L2."""
  group = group_m * num_n
  first_m = (i // group) * group_m
  size_m = jnp.minimum(num_m - first_m, group_m)
  pid_m = first_m + (i % group) % size_m
  pid_n = (i % group) // size_m
  return pid_m, pid_n


def outlier_operands(x_o, w_o, count, bm, bn, ids):
  """BlockSpecs and arguments of the 16-bit outlier operands of a tiled GEMM kernel: x_o [M, C] and
  w_o [N, C] zero-padded to a power-of-two C >= 16 (what a Triton dot takes; zeros add 0), count [1]."""
  c = x_o.shape[1]
  cp = max(16, _shapes.next_pow2(c))
  if cp != c:
    x_o = jnp.pad(x_o, ((0, 0), (0, cp - c)))
    w_o = jnp.pad(w_o, ((0, 0), (0, cp - c)))
  in_specs = [pl.BlockSpec((bm, cp), lambda i, *_: (ids(i)[0], 0)),
              pl.BlockSpec((bn, cp), lambda i, *_: (ids(i)[1], 0)),
              pl.BlockSpec((1,), lambda i, *_: (0,))]
  return in_specs, [x_o, w_o, jnp.reshape(count, (1,)).astype(jnp.int32)]


def tiled_pallas_call(kernel_fn, in_specs, args, *, ids, m, n, bm, bn, num_tiles, split_k, out_dtype,
                      cfg, interpret, name, partial_scale=None, row_scale=None, bias=None,
                      partial_dtype=jnp.float32):
  """The pallas_call of a tiled GEMM over `num_tiles` output tiles in `ids` order. With split_k > 1,
  each tile's K slices write partials [S, M, N] (partial_dtype: float32, or int32 for exact integer
  sums), which one small XLA fusion sums, converts to float32, scales by
  `row_scale` [M] and `partial_scale` [N] (if given, in that order, as the kernels' epilogues),
  adds `bias` to and casts."""
  if split_k > 1:
    out_specs = pl.BlockSpec((None, bm, bn), lambda i, s: (s, *ids(i)))
    out_shape = jax.ShapeDtypeStruct((split_k, m, n), partial_dtype)
  else:
    out_specs = pl.BlockSpec((bm, bn), lambda i, *_: ids(i))
    out_shape = jax.ShapeDtypeStruct((m, n), out_dtype)
  out = pl.pallas_call(
      kernel_fn,
      grid=(num_tiles, split_k) if split_k > 1 else (num_tiles,),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=compiler_params(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
      interpret=interpret,
      name=name,
  )(*args)
  if split_k > 1:
    y = jnp.sum(out, axis=0).astype(jnp.float32)
    if row_scale is not None:
      y = y * row_scale[:, None]
    if partial_scale is not None:
      y = y * partial_scale[None, :]
    if bias is not None:
      y = y + bias.astype(jnp.float32)[None, :]
    out = y.astype(out_dtype)
  return out


def _mm_kernel(
    x_ref,   # [bm, K] int8 (w8a8) or 16-bit (w8a16)
    sx_ref,  # [bm] float32, or None
    w_ref,   # [bn, K] int8
    sw_ref,  # [bn] float32
    b_ref,   # [bn] bias, or None
    xo_ref,  # [bm, C] 16-bit, or None
    wo_ref,  # [bn, C] 16-bit, or None
    cnt_ref,  # [1] int32, or None
    o_ref,   # [bm, bn]; with split_k > 1: the raw float32 partial sum of this K slice
    *, m, bm, bk, nk, num_m, num_n, group_m, int8_act, split_k,
):
  pid_m, _ = _tile_ids(pl.program_id(0), num_m, num_n, group_m)
  k0 = pl.program_id(1) * nk if split_k > 1 else 0  # first K step of this program's slice
  ragged = m % bm != 0
  rmask = ((pid_m * bm + jnp.arange(bm)) < m)[:, None] if ragged else None  # [bm, 1]

  def body(i, acc):
    cols = pl.ds((k0 + i) * bk, bk)
    if ragged:
      x = plgpu.load(x_ref.at[:, cols], mask=rmask, other=0)
    else:
      x = x_ref[:, cols]
    w = w_ref[:, cols]
    if int8_act:
      return acc + jax.lax.dot_general(x, w, _NT, preferred_element_type=jnp.int32)
    # W8A16: dequantize in registers (int8 -> 16-bit is exact), 16-bit MMA, f32 accumulate.
    return acc + jax.lax.dot_general(x, w.astype(x.dtype), _NT, preferred_element_type=jnp.float32)

  acc_t = jnp.int32 if int8_act else jnp.float32
  acc = jax.lax.fori_loop(0, nk, body, jnp.zeros((x_ref.shape[0], w_ref.shape[0]), acc_t))
  y = acc.astype(jnp.float32)
  if split_k > 1:  # the scales and bias are applied after the sum over slices, in the wrapper
    if ragged:
      plgpu.store(o_ref.at[:, :], y, mask=rmask)
    else:
      o_ref[...] = y
    return
  if sx_ref is not None:
    sx = plgpu.load(sx_ref.at[:], mask=rmask[:, 0], other=0) if ragged else sx_ref[...]
    y = y * sx[:, None]
  y = y * sw_ref[...][None, :]
  if xo_ref is not None:
    c = xo_ref.shape[1]
    valid = (jnp.arange(c) < cnt_ref[0])[None, :]  # [1, C]: capacity slots past count are ignored
    xo_mask = jnp.broadcast_to(valid & rmask if ragged else valid, xo_ref.shape)
    xo = plgpu.load(xo_ref.at[:, :], mask=xo_mask, other=0)
    wo = jnp.where(valid, wo_ref[...], 0).astype(xo.dtype)
    y = y + jax.lax.dot_general(xo, wo, _NT, preferred_element_type=jnp.float32)
  if b_ref is not None:
    y = y + b_ref[...].astype(jnp.float32)[None, :]
  y = y.astype(o_ref.dtype)
  if ragged:
    plgpu.store(o_ref.at[:, :], y, mask=rmask)
  else:
    o_ref[...] = y


def fused_matmul(x, s_x, w, s_w, bias, x_o, w_o, count, *, kernel, out_dtype, interpret, config):
  """Shared wrapper of w8a8 / w8a8o16 / w8a16 (not jitted itself; callers are)."""
  m, k = x.shape
  n = w.shape[0]
  int8_act = kernel != "w8a16"
  cfg = config or select_config(kernel, m, n, k)
  # int8 MMA steps K by 32; pad K with zeros (no contribution) only for K = 16 * odd.
  min_bk = 32 if int8_act else 16
  if k % min_bk:
    pad = min_bk - k % min_bk
    x = jnp.pad(x, ((0, 0), (0, pad)))
    w = jnp.pad(w, ((0, 0), (0, pad)))
    k += pad
  bm = max(16, min(cfg.block_m, _shapes.next_pow2(m)))
  bn = _shapes.pow2_divisor(n, cfg.block_n)
  bk = max(min_bk, _shapes.pow2_divisor(k, cfg.block_k))
  num_m, num_n = pl.cdiv(m, bm), n // bn
  # Split-K (w8a16 only): S programs per output tile each reduce K/S; float32 partials are
  # summed (and scaled) by XLA. Fills the SMs when M is tiny and N / block_n is small.
  split_k = cfg.split_k if not int8_act else 1
  while split_k > 1 and (k // bk) % split_k:
    split_k //= 2
  ids = functools.partial(_tile_ids, num_m=num_m, num_n=num_n, group_m=cfg.group_m)
  row = lambda i, *_: (ids(i)[0],)
  col = lambda i, *_: (ids(i)[1],)

  in_specs = [pl.BlockSpec((bm, k), lambda i, *_: (ids(i)[0], 0))]
  args = [x]
  if s_x is not None:
    in_specs.append(pl.BlockSpec((bm,), row))
    args.append(s_x)
  in_specs += [pl.BlockSpec((bn, k), lambda i, *_: (ids(i)[1], 0)), pl.BlockSpec((bn,), col)]
  args += [w, s_w]
  if bias is not None:
    in_specs.append(pl.BlockSpec((bn,), col))
    args.append(bias)
  if x_o is not None:
    o_specs, o_args = outlier_operands(x_o, w_o, count, bm, bn, ids)
    in_specs += o_specs
    args += o_args
  has_sx, has_b, has_o = s_x is not None, bias is not None, x_o is not None

  def kernel_fn(*refs):
    refs = list(refs)
    x_ref = refs.pop(0)
    sx_ref = refs.pop(0) if has_sx else None
    w_ref, sw_ref = refs.pop(0), refs.pop(0)
    b_ref = refs.pop(0) if has_b else None
    xo_ref, wo_ref, cnt_ref = (refs.pop(0), refs.pop(0), refs.pop(0)) if has_o else (None,) * 3
    _mm_kernel(x_ref, sx_ref, w_ref, sw_ref, b_ref, xo_ref, wo_ref, cnt_ref, refs.pop(0),
               m=m, bm=bm, bk=bk, nk=k // bk // split_k, num_m=num_m, num_n=num_n,
               group_m=cfg.group_m, int8_act=int8_act, split_k=split_k)

  return tiled_pallas_call(kernel_fn, in_specs, args, ids=ids, m=m, n=n, bm=bm, bn=bn,
                           num_tiles=num_m * num_n, split_k=split_k, out_dtype=out_dtype, cfg=cfg,
                           interpret=interpret, name=f"{kernel}_matmul", partial_scale=s_w, bias=bias)


def _check(x_q, s_x, w_q, s_w, bias):
  _shapes.check_2d("x_q", x_q, (jnp.int8,))
  _shapes.check_2d("w_q", w_q, (jnp.int8,))
  m, k = x_q.shape
  n, kw = w_q.shape
  if kw != k:
    raise ValueError(f"x_q.shape={x_q.shape} and w_q.shape={w_q.shape} disagree on K ({k} != {kw})")
  _shapes.check_mult16(N=n, K=k)
  _shapes.check_vec("s_x", s_x, m, jnp.float32)
  _shapes.check_vec("s_w", s_w, n, jnp.float32)
  if bias is not None:
    _shapes.check_vec("bias", bias, n)
  return m, n, k


def _check_outliers(x_o, w_o, count, m, n):
  _shapes.check_2d("x_o", x_o, (jnp.bfloat16, jnp.float16))
  _shapes.check_2d("w_o", w_o, (jnp.bfloat16, jnp.float16))
  c = x_o.shape[1]
  if x_o.shape != (m, c) or w_o.shape != (n, c):
    raise ValueError(f"x_o.shape={x_o.shape}, w_o.shape={w_o.shape}; expected ({m}, C), ({n}, C)")
  if jnp.shape(count) not in ((), (1,)):
    raise ValueError(f"outlier_count must be a scalar, got shape {jnp.shape(count)}")
  return c


_STATIC = ("out_dtype", "interpret", "config")

# From this many tokens on, sm_90 runs the Mosaic GPU kernels (w8a8_matmul_hopper.py): measured on an
# H100 at M = 1024 and 4096, W8A8 beats the Triton tile loop by 1.25-1.5x (BENCHMARKS.md); below, the
# output has too few 128 x 256 tiles to fill 132 SMs and the Triton configs tuned per M bucket win.
HOPPER_MIN_M = 1024


def hopper_config(m, n, k, interpret, config, outlier_columns=0, out_dtype=jnp.bfloat16, bias=False, rank1=False):
  """The HopperConfig that w8a8_matmul (outlier_columns=0) / w8a8o16_matmul (w8a8o16_matmul_hopper.py)
  would run, or None for the Triton kernel: CPU, interpret mode, an explicit KernelConfig, small M, other
  GPUs, or a shape or buffer set the Hopper kernels do not tile or fit. The outlier columns take no
  shared memory of their own there (they are extra pipeline steps), so both use the same tiles."""
  del outlier_columns
  if interpret or config is not None or m < HOPPER_MIN_M or not _hopper.is_hopper():
    return None
  cfg = _hopper.HopperConfig()
  if not _hopper.supported(m, n, k, cfg) or not _hopper.fits(cfg, out_dtype, bias, rank1):
    return None
  # The persistent kernel needs enough output tiles to occupy the SMs: 70B's k/v projection
  # (N = 1024) at M = 1024 has 32 tiles and measured 0.68x bf16, while the Triton grid splits finer.
  tiles = pl.cdiv(m, cfg.tile_m) * (n // (2 * cfg.tile_n))
  return cfg if tiles >= _hopper.device_sm_count() // 2 else None


@functools.partial(jax.jit, static_argnames=_STATIC)
def w8a8_matmul(
    x_q: jax.Array,  # [M, K] int8
    s_x: jax.Array,  # [M] float32
    w_q: jax.Array,  # [N, K] int8
    s_w: jax.Array,  # [N] float32
    bias: jax.Array | None = None,  # [N]
    *,
    out_dtype=jnp.bfloat16,
    interpret: bool = False,
    config: KernelConfig | None = None,
) -> jax.Array:  # [M, N] out_dtype
  """Pallas int8 GEMM with per-token x per-channel dequant epilogue. Any M; N, K multiples of 16."""
  m, n, k = _check(x_q, s_x, w_q, s_w, bias)
  hcfg = hopper_config(m, n, k, interpret, config, out_dtype=out_dtype, bias=bias is not None)
  if hcfg is not None:
    return _hopper.w8a8_matmul_hopper(x_q, s_x, w_q, s_w, bias, out_dtype=out_dtype, config=hcfg)
  return fused_matmul(x_q, s_x, w_q, s_w, bias, None, None, None, kernel="w8a8",
                      out_dtype=out_dtype, interpret=interpret, config=config)


def dequant_epilogue(acc, s_x, s_w, bias=None, out_dtype=jnp.bfloat16, extra=()):
  """The int8 family's epilogue in XLA (references, xla_matmuls): y = acc s_x[m] s_w[n] (+ each of extra, in order) (+ bias),
  in float32, then out_dtype. acc [M, N] int32; extra: float32 [M, N] terms (the outlier product,
  QUIK's rank-1 zero-point term)."""
  y = acc.astype(jnp.float32) * s_x[:, None] * s_w[None, :]
  for term in extra:
    y = y + term
  if bias is not None:
    y = y + bias.astype(jnp.float32)[None, :]
  return y.astype(out_dtype)


def outlier_product_reference(x_o, w_o, outlier_count):
  """x_o [M, C] @ w_o[N, C].T in float32 (HIGHEST), outlier slots >= count ignored: [M, N]."""
  valid = (jnp.arange(x_o.shape[1]) < outlier_count)[None, :]
  xo = jnp.where(valid, x_o, 0).astype(jnp.float32)
  wo = jnp.where(valid, w_o, 0).astype(jnp.float32)
  return jax.lax.dot_general(xo, wo, _NT, precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.jit, static_argnames=_STATIC)
def w8a8_matmul_reference(x_q, s_x, w_q, s_w, bias=None, *, out_dtype=jnp.bfloat16,
                          interpret=False, config=None):
  """Plain-jnp w8a8_matmul (exact int32 accumulate, same float32 epilogue order)."""
  del interpret, config
  _check(x_q, s_x, w_q, s_w, bias)
  acc = jax.lax.dot_general(x_q, w_q, _NT, preferred_element_type=jnp.int32)
  return dequant_epilogue(acc, s_x, s_w, bias, out_dtype)


@functools.partial(jax.jit, static_argnames=_STATIC)
def w8a8o16_matmul(
    x_q: jax.Array,  # [M, K] int8, outlier columns zero
    s_x: jax.Array,  # [M] float32
    w_q: jax.Array,  # [N, K] int8
    s_w: jax.Array,  # [N] float32
    x_o: jax.Array,  # [M, C] bf16/fp16 outlier activations
    w_o: jax.Array,  # [N, C] bf16/fp16 outlier weight columns (W[:, idx])
    outlier_count: jax.Array,  # [] int32: slots >= count of x_o / w_o are ignored
    bias: jax.Array | None = None,  # [N]
    *,
    out_dtype=jnp.bfloat16,
    interpret: bool = False,
    config: KernelConfig | None = None,
) -> jax.Array:  # [M, N] out_dtype
  """MixQ W8A8O16: w8a8 plus the 16-bit outlier product x_o @ w_o.T fused into each output tile."""
  m, n, k = _check(x_q, s_x, w_q, s_w, bias)
  c = _check_outliers(x_o, w_o, outlier_count, m, n)
  if c == 0:
    return w8a8_matmul(x_q, s_x, w_q, s_w, bias, out_dtype=out_dtype, interpret=interpret,
                       config=config)
  hcfg = hopper_config(m, n, k, interpret, config, outlier_columns=c, out_dtype=out_dtype, bias=bias is not None)
  if hcfg is not None:
    return _hopper_o16.w8a8o16_matmul_hopper(x_q, s_x, w_q, s_w, x_o, w_o, outlier_count, bias, out_dtype=out_dtype,
                                             config=hcfg)
  return fused_matmul(x_q, s_x, w_q, s_w, bias, x_o, w_o, outlier_count, kernel="w8a8o16",
                      out_dtype=out_dtype, interpret=interpret, config=config)


@functools.partial(jax.jit, static_argnames=_STATIC)
def w8a8o16_matmul_reference(x_q, s_x, w_q, s_w, x_o, w_o, outlier_count, bias=None, *,
                             out_dtype=jnp.bfloat16, interpret=False, config=None):
  """Plain-jnp w8a8o16_matmul."""
  del interpret, config
  m, n, _ = _check(x_q, s_x, w_q, s_w, bias)
  _check_outliers(x_o, w_o, outlier_count, m, n)
  acc = jax.lax.dot_general(x_q, w_q, _NT, preferred_element_type=jnp.int32)
  outliers = outlier_product_reference(x_o, w_o, outlier_count)
  return dequant_epilogue(acc, s_x, s_w, bias, out_dtype, [outliers])
