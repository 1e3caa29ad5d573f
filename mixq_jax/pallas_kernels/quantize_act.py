"""Per-token int8 activation quantization with an outlier-column split (MixQ), optionally fused
with the RMSNorm that feeds the projection and with a per-channel scale (SmoothQuant's 1/s).

Shape letters: M tokens, K input features, C outlier capacity.

    x_n = (x * norm_weight) * rsqrt(mean(x**2) + eps)      (if norm_weight is given; else x_n = x)
    x_n = x_n * col_scale                                  (if col_scale is given, in float32)
    amax[m] = max over non-outlier k of |x_n[m, k]|
    s_x[m] = max(amax[m], AMAX_FLOOR) / 127
    x_q[m, k] = clip(floor(x_n[m, k] * (127 / max(amax[m], AMAX_FLOOR)) + 0.5), -127, 127)
                (0 on outlier columns)
    x_outlier[m, c] = x_n[m, idx[c]] if c < count else 0     (in x.dtype)

The outlier set I is a fixed-capacity buffer `idx` int32 [C] plus a `count` int32 scalar;
entries at positions >= count are ignored (they may hold anything). The MixQ detection signal is
free: any non-outlier |x_n| > threshold  <=>  max(s_x) * 127 > threshold (see `outlier_flag`);
`detect_columns=True` also returns which columns crossed it (bool [K]), which costs a small extra
output per row block.

Rounding is floor(v + 0.5) (half away from zero for positive, half up for negative ties), chosen
because the Triton backend has no round-half-even; the reference uses the same formula.

Both implementations see the same input values: the kernel reads x as stored (16-bit), and the
reference pins x to its dtype with `reduce_precision` before computing in float32, so XLA's GPU
pass that drops f32 -> bf16 -> f32 conversion pairs inside a fusion (excess precision) cannot make
the reference quantize an unrounded producer (a norm, a smoothing multiply) that the kernel never
sees. The smoothing multiply itself happens here in float32 (`col_scale`) for the same reason, and
because fused it costs no extra pass over x.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mixq_jax.pallas_kernels import _shapes
from mixq_jax.pallas_kernels._triton import compiler_params, plgpu
from mixq_jax.pallas_kernels.configs import KernelConfig, select_config

AMAX_FLOOR = 1e-5  # keeps 127/amax finite for an all-zero (or all-outlier) row
MAX_UNROLL = 16    # K chunks kept in registers; beyond this, two passes (compile time, registers)


def k_chunks(k: int, block_k: int) -> tuple[tuple[int, int], ...]:
  """(start, size) chunks that tile [0, K): K // block_k chunks of block_k, then the remainder as
  powers of two, largest first (block_k is a power of two, so every size is one).

  Sizes need not divide K: K = 11008 (Llama-2-7B's MLP) = 5 x 2048 + 512 + 256 is 7 chunks, where
  equal chunks (256, the largest power of two dividing it) are 43, and a loop over those ran
  23.5 us at M = 1 against 3.2 us for K = 4096 (H100, bench/h100_2026-12-05b/g8_dec.json)."""
  chunks, start = [], 0
  while start < k:
    size = min(block_k, 1 << ((k - start).bit_length() - 1))
    chunks.append((start, size))
    start += size
  return tuple(chunks)


def single_pass(k: int, cfg: KernelConfig) -> bool:
  """Whether the row block stays in registers (x read once): `cfg.passes == 1` and at most
  MAX_UNROLL chunks. Otherwise the statistics and the quantization each loop over the row, and the
  second pass reads it again, mostly from L2."""
  return cfg.passes == 1 and len(k_chunks(k, cfg.block_k)) <= MAX_UNROLL


class QuantizedActivations(NamedTuple):
  x_q: jax.Array          # [M, K] int8, outlier columns zero
  s_x: jax.Array          # [M] float32 per-token scale
  x_outlier: jax.Array    # [M, C] x.dtype, outlier columns in 16-bit (zero past count)
  col_mask: jax.Array | None  # [K] bool: non-outlier columns with |x_n| > threshold (detect_columns)


def outlier_flag(s_x: jax.Array, threshold: float = 6.0) -> jax.Array:
  """MixQ detection signal from the scales alone: True if any non-outlier |x_n| > threshold."""
  return jnp.max(s_x) * 127.0 > threshold


def outlier_mask_from_idx(idx, count, k):
  """[K] int8, 1 on the first `count` columns of idx (a tiny XLA scatter)."""
  valid = jnp.arange(idx.shape[0]) < count
  safe = jnp.where(valid, idx, 0)
  return jnp.zeros((k,), jnp.int8).at[safe].max(valid.astype(jnp.int8))


def _quantize_kernel(
    x_ref,     # [bm, K] 16-bit
    om_ref,    # [K] int8, 1 = outlier column
    nw_ref,    # [K] norm weight, or None
    cs_ref,    # [K] float32 column scale, or None
    idx_ref,   # [C] int32, or None
    cnt_ref,   # [1] int32, or None
    q_ref,     # [bm, K] int8
    s_ref,     # [bm] float32
    xo_ref,    # [bm, C] 16-bit, or None
    cm_ref,    # [K] int8 column flags of this row block, or None
    *, m, bm, k, chunks, one_pass, eps, threshold,
):
  # `chunks`: (start, size) pairs from k_chunks, the first ones all of size bk. One pass
  # (`one_pass`): the K loop is unrolled in Python, every chunk's load is issued up front and the
  # row block stays in registers between the statistics and the quantization, so x is read once.
  # Two passes: the equal chunks go through a fori_loop (the tail is unrolled), once for the
  # statistics and once for the quantization, which reads the row block again (from L2).
  bk = chunks[0][1]
  n_main = sum(1 for _, size in chunks if size == bk)
  tail = chunks[n_main:]
  ragged = m % bm != 0
  rows = pl.program_id(0) * bm + jnp.arange(bm)
  rmask = (rows < m)[:, None] if ragged else None  # [bm, 1]

  def load(start, size):  # -> x * norm_weight [bm, size] f32, outlier flags [size], x**2 [bm, size] or None
    cols = pl.ds(start, size)
    if ragged:
      x = plgpu.load(x_ref.at[:, cols], mask=rmask, other=0)
    else:
      x = x_ref[:, cols]
    x = x.astype(jnp.float32)
    xx = None
    if nw_ref is not None:
      xx = x * x
      x = x * nw_ref[cols].astype(jnp.float32)[None, :]
    if cs_ref is not None:  # commutes with the row's rsqrt, which only scales the row
      x = x * cs_ref[cols][None, :]
    return x, om_ref[cols] != 0, xx

  def stats(chunk, ss, amax):
    xw, is_out, xx = chunk
    if xx is not None:
      ss = ss + jnp.sum(xx, axis=1)
    a = jnp.where(is_out[None, :], 0.0, jnp.abs(xw))
    return ss, jnp.maximum(amax, jnp.max(a, axis=1))

  def quant(start, size, chunk, r, inv):
    cols = pl.ds(start, size)
    xw, is_out, _ = chunk
    xn = xw * r[:, None] if r is not None else xw
    is_out = is_out[None, :]  # [1, size]
    q = jnp.clip(jnp.floor(xn * inv[:, None] + 0.5), -127.0, 127.0)
    q = jnp.where(is_out, 0.0, q).astype(jnp.int8)
    if ragged:
      plgpu.store(q_ref.at[:, cols], q, mask=rmask)
    else:
      q_ref[:, cols] = q
    if cm_ref is not None:
      hit = (jnp.abs(xn) > threshold) & jnp.logical_not(is_out)
      if ragged:
        hit = hit & rmask
      cm_ref[cols] = jnp.max(hit.astype(jnp.int32), axis=0).astype(jnp.int8)

  zero = jnp.zeros((bm,), jnp.float32)
  if one_pass:
    loaded = [load(start, size) for start, size in chunks]
    ss, amax = zero, zero
    for chunk in loaded:
      ss, amax = stats(chunk, ss, amax)
  else:
    ss, amax = jax.lax.fori_loop(
        0, n_main, lambda i, c: stats(load(pl.multiple_of(i * bk, bk), bk), *c), (zero, zero))
    for start, size in tail:
      ss, amax = stats(load(start, size), ss, amax)
  if nw_ref is not None:
    r = jax.lax.rsqrt(ss / k + eps)  # [bm]
    amax = amax * r
  else:
    r = None
  amax = jnp.maximum(amax, AMAX_FLOOR)
  inv = 127.0 / amax  # [bm]
  if ragged:
    plgpu.store(s_ref.at[:], amax / 127.0, mask=rows < m)
  else:
    s_ref[...] = amax / 127.0
  if one_pass:
    for (start, size), chunk in zip(chunks, loaded):
      quant(start, size, chunk, r, inv)
  else:
    def body(i, carry):
      start = pl.multiple_of(i * bk, bk)
      quant(start, bk, load(start, bk), r, inv)
      return carry
    jax.lax.fori_loop(0, n_main, body, 0)
    for start, size in tail:
      quant(start, size, load(start, size), r, inv)

  if xo_ref is not None:
    c = idx_ref.shape[0]
    valid_c = jnp.arange(c) < cnt_ref[0]  # [C]
    idx = jnp.where(valid_c, idx_ref[...], 0)
    gmask = jnp.broadcast_to(valid_c[None, :], (bm, c))
    if ragged:
      gmask = gmask & rmask
    xg = plgpu.load(x_ref.at[jnp.arange(bm)[:, None], idx[None, :]], mask=gmask, other=0)
    xg = xg.astype(jnp.float32)  # [bm, C]
    if nw_ref is not None:
      xg = xg * nw_ref[idx].astype(jnp.float32)[None, :]
    if cs_ref is not None:
      xg = xg * cs_ref[idx][None, :]
    if nw_ref is not None:
      xg = xg * r[:, None]
    xg = jnp.where(gmask, xg, 0.0).astype(xo_ref.dtype)
    if ragged:
      plgpu.store(xo_ref.at[:, :], xg, mask=rmask)
    else:
      xo_ref[...] = xg


def pin_input_rounding(x: jax.Array) -> jax.Array:
  """x as float32, rounded to x's own 16-bit format by an op XLA keeps (see the module docstring)."""
  xf = x.astype(jnp.float32)
  if x.dtype == jnp.float32:
    return xf
  fi = jnp.finfo(x.dtype)
  return jax.lax.reduce_precision(xf, exponent_bits=fi.nexp, mantissa_bits=fi.nmant)


def _check(x, outlier_idx, outlier_count, norm_weight, col_scale=None):
  _shapes.check_2d("x", x, (jnp.bfloat16, jnp.float16, jnp.float32))
  m, k = x.shape
  _shapes.check_mult16(K=k)
  if outlier_idx.ndim != 1 or outlier_idx.dtype != jnp.int32:
    raise ValueError(f"outlier_idx must be int32 [C], got {outlier_idx.dtype}{list(outlier_idx.shape)}")
  if jnp.shape(outlier_count) not in ((), (1,)):
    raise ValueError(f"outlier_count must be a scalar, got shape {jnp.shape(outlier_count)}")
  if norm_weight is not None:
    _shapes.check_vec("norm_weight", norm_weight, k)
  if col_scale is not None:
    _shapes.check_vec("col_scale", col_scale, k)
  return m, k


@functools.partial(
    jax.jit, static_argnames=("eps", "threshold", "detect_columns", "interpret", "config"))
def quantize_act(
    x: jax.Array,              # [M, K] bf16 / fp16
    outlier_idx: jax.Array,    # [C] int32
    outlier_count: jax.Array,  # [] int32
    norm_weight: jax.Array | None = None,  # [K] RMSNorm weight to fuse, or None
    outlier_mask: jax.Array | None = None,  # [K] int8/bool, 1 on idx[:count]; built if None
    col_scale: jax.Array | None = None,  # [K] per-channel multiplier (SmoothQuant 1/s), or None
    *,
    eps: float = 1e-6,
    threshold: float = 6.0,
    detect_columns: bool = False,
    interpret: bool = False,
    config: KernelConfig | None = None,
) -> QuantizedActivations:
  """Pallas per-token int8 quantization with outlier split (and optional fused RMSNorm).

  Any M; K a multiple of 16; C any (0 allowed). Returns `QuantizedActivations`.
  `outlier_mask` (= `outlier_mask_from_idx(idx, count, K)`) may be passed when the caller keeps
  it with the outlier state; otherwise it is rebuilt here by a small XLA scatter each call.
  """
  m, k = _check(x, outlier_idx, outlier_count, norm_weight, col_scale)
  c = outlier_idx.shape[0]
  cfg = config or select_config("quantize_act", m, 0, k)
  bm = min(cfg.block_m, _shapes.next_pow2(m))
  chunks = k_chunks(k, cfg.block_k)
  one_pass = single_pass(k, cfg)
  # The row block (one pass) or chunk (two passes) lives in registers: keep it to <= ~64 float32
  # values per thread.
  held = bm * (k if one_pass else chunks[0][1])
  num_warps = max(cfg.num_warps, min(16, _shapes.next_pow2(-(-held // (32 * 64)))))
  nb = pl.cdiv(m, bm)
  count = jnp.reshape(outlier_count, (1,)).astype(jnp.int32)
  # Triton tiles are powers of two: pad the index buffer (padding lies past count, so ignored).
  cp = _shapes.next_pow2(c) if c else 0
  idx = jnp.pad(outlier_idx, (0, cp - c)) if cp != c else outlier_idx
  if outlier_mask is not None:
    _shapes.check_vec("outlier_mask", outlier_mask, k)
    om = outlier_mask.astype(jnp.int8)
  else:
    om = outlier_mask_from_idx(outlier_idx, outlier_count, k) if c else jnp.zeros((k,), jnp.int8)

  full_k = pl.BlockSpec((k,), lambda i: (0,))
  in_specs = [pl.BlockSpec((bm, k), lambda i: (i, 0)), full_k]
  args = [x, om]
  if norm_weight is not None:
    in_specs.append(full_k)
    args.append(norm_weight)
  if col_scale is not None:
    in_specs.append(full_k)
    args.append(col_scale.astype(jnp.float32))
  if c:
    in_specs += [pl.BlockSpec((cp,), lambda i: (0,)), pl.BlockSpec((1,), lambda i: (0,))]
    args += [idx, count]
  out_shape = [jax.ShapeDtypeStruct((m, k), jnp.int8), jax.ShapeDtypeStruct((m,), jnp.float32)]
  out_specs = [pl.BlockSpec((bm, k), lambda i: (i, 0)), pl.BlockSpec((bm,), lambda i: (i,))]
  if c:
    out_shape.append(jax.ShapeDtypeStruct((m, cp), x.dtype))
    out_specs.append(pl.BlockSpec((bm, cp), lambda i: (i, 0)))
  if detect_columns:
    out_shape.append(jax.ShapeDtypeStruct((nb, k), jnp.int8))
    out_specs.append(pl.BlockSpec((None, k), lambda i: (i, 0)))

  has_nw, has_cs, has_c = norm_weight is not None, col_scale is not None, bool(c)

  def kernel(*refs):
    refs = list(refs)
    x_ref, om_ref = refs.pop(0), refs.pop(0)
    nw_ref = refs.pop(0) if has_nw else None
    cs_ref = refs.pop(0) if has_cs else None
    idx_ref, cnt_ref = (refs.pop(0), refs.pop(0)) if has_c else (None, None)
    q_ref, s_ref = refs.pop(0), refs.pop(0)
    xo_ref = refs.pop(0) if has_c else None
    cm_ref = refs.pop(0) if detect_columns else None
    _quantize_kernel(x_ref, om_ref, nw_ref, cs_ref, idx_ref, cnt_ref, q_ref, s_ref, xo_ref, cm_ref,
                     m=m, bm=bm, k=k, chunks=chunks, one_pass=one_pass, eps=eps, threshold=threshold)

  outs = pl.pallas_call(
      kernel,
      grid=(nb,),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=compiler_params(num_warps=num_warps, num_stages=cfg.num_stages),
      interpret=interpret,
      name="quantize_act",
  )(*args)
  outs = list(outs)
  x_q, s_x = outs.pop(0), outs.pop(0)
  x_o = outs.pop(0)[:, :c] if c else jnp.zeros((m, 0), x.dtype)
  col_mask = jnp.any(outs.pop(0) != 0, axis=0) if detect_columns else None
  return QuantizedActivations(x_q, s_x, x_o, col_mask)


@functools.partial(jax.jit, static_argnames=("eps", "threshold", "detect_columns", "interpret", "config"))
def quantize_act_reference(
    x, outlier_idx, outlier_count, norm_weight=None, outlier_mask=None, col_scale=None, *, eps=1e-6,
    threshold=6.0, detect_columns=False, interpret=False, config=None,
) -> QuantizedActivations:
  """Plain-jnp quantize_act, same signature and outputs (interpret/config ignored).

  `outlier_mask`, as in `quantize_act`, must equal `outlier_mask_from_idx(idx, count, K)`; passing
  it saves the scatter that builds it (one small kernel per call, which matters at decode)."""
  del interpret, config
  m, k = _check(x, outlier_idx, outlier_count, norm_weight, col_scale)
  c = outlier_idx.shape[0]
  xf = pin_input_rounding(x)
  if not c:
    is_out = jnp.zeros((k,), bool)
  elif outlier_mask is not None:
    _shapes.check_vec("outlier_mask", outlier_mask, k)
    is_out = outlier_mask != 0
  else:
    is_out = outlier_mask_from_idx(outlier_idx, outlier_count, k) != 0
  xw = xf * norm_weight.astype(jnp.float32)[None, :] if norm_weight is not None else xf
  if col_scale is not None:
    xw = xw * col_scale.astype(jnp.float32)[None, :]
  amax = jnp.max(jnp.where(is_out[None, :], 0.0, jnp.abs(xw)), axis=1)
  if norm_weight is not None:
    r = jax.lax.rsqrt(jnp.sum(xf * xf, axis=1) / k + eps)  # [M]
    amax = amax * r
    xn = xw * r[:, None]
  else:
    xn = xw
  amax = jnp.maximum(amax, AMAX_FLOOR)
  q = jnp.clip(jnp.floor(xn * (127.0 / amax)[:, None] + 0.5), -127.0, 127.0)
  x_q = jnp.where(is_out[None, :], 0.0, q).astype(jnp.int8)
  if c:
    valid = jnp.arange(c) < outlier_count
    x_o = jnp.where(valid[None, :], xn[:, jnp.where(valid, outlier_idx, 0)], 0.0).astype(x.dtype)
  else:
    x_o = jnp.zeros((m, 0), x.dtype)
  col_mask = None
  if detect_columns:
    col_mask = jnp.any((jnp.abs(xn) > threshold) & ~is_out[None, :], axis=0)
  return QuantizedActivations(x_q, amax / 127.0, x_o, col_mask)
