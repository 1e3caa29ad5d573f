"""The quantized linear layer and its activation "sites".

Every projection of every model is a `QuantDense`; each group of projections that reads the same
activation (q/k/v, gate/up, o, down, the head) has one `ActQuant` site in front of it, which turns
the activation into what the group's scheme needs (nothing, per-token int8, int8 + outlier split)
exactly once. Weights keep the HF orientation W [N, K] (K-major, what the int8 tensor-core kernels
want). `qmatmul` is the single dispatch point: impl="pallas" runs the Pallas kernels, "interpret"
runs them in Pallas interpret mode, "xla" runs their plain-jnp references (same function). Where
XLA measured faster, impl="pallas" takes the jnp path too: products of one token
(XLA_MATMUL_MAX_M) and activation quantization of up to 64 tokens (FUSED_QUANT_MAX_M).

Shape letters: M = B*T tokens, K inputs, N outputs, C outlier capacity.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixq_jax import pallas_kernels as pk
from mixq_jax import schemes, sharding
from mixq_jax.schemes import ACT_KIND, LayerQuant, QuantPlan

Array = jax.Array
BF16 = LayerQuant()


class QAct(NamedTuple):
  """A site's activation, prepared for its scheme (fields unused by a scheme are None)."""
  x: Array  # [M, K] (K padded to a multiple of 16 for int8 schemes)
  x_q: Array | None = None  # [M, K] int8, outlier columns zeroed
  s_x: Array | None = None  # [M] float32 per-token scale
  x_o: Array | None = None  # [M, C] bf16 outlier columns
  idx: Array | None = None  # [C] int32 outlier column indices
  count: Array | None = None  # [] int32 valid entries of idx
  calib_count: Array | None = None  # [] int32 leading entries of idx whose 16-bit weights are stored


def _round16(n: int) -> int:
  return -(-n // 16) * 16


def _pad_to(a: Array, axis: int, size: int) -> Array:
  if a.shape[axis] == size:
    return a
  pad = [(0, 0)] * a.ndim
  pad[axis] = (0, size - a.shape[axis])
  return jnp.pad(a, pad)


def _fit_k(a: Array, k: int, kp: int) -> Array:
  """a [M, >=k] -> [M, kp]: its first k columns, zero-padded to the kernel's multiple of 16."""
  return a if a.shape[1] == kp else _pad_to(a[:, :k], 1, kp)


def _kernels(impl: str):
  """(quantize_act, w8a8, w8a8o16, w8a16, extra kwargs) for an impl."""
  if impl == "xla":
    return (pk.quantize_act_reference, pk.w8a8_matmul_reference, pk.w8a8o16_matmul_reference,
            pk.w8a16_matmul_reference, {})
  if impl in ("pallas", "interpret"):
    return pk.quantize_act, pk.w8a8_matmul, pk.w8a8o16_matmul, pk.w8a16_matmul, {"interpret": impl == "interpret"}
  raise ValueError(f"impl={impl!r} must be one of xla, pallas, interpret")


COLS = schemes.OUTLIER_COLS

# Sites with at most this many tokens (decode) quantize with the jnp reference even when
# impl="pallas": XLA fuses it into the RMSNorm / residual add that produce x, where the Pallas
# kernel is one more launch and one more round trip of x per site. A/B in one H100 run, llama-2-7b
# preset, decode tok/s kernel -> jnp quantizer: w8a8 200.8 -> 245.4 at batch 1, 2734 -> 3142 at 16;
# mix8 179.3 -> 202.2 and 2479 -> 2680; no gain at batch 256 (BENCHMARKS.md, issue 6).
# The two agree to 1 LSB of x_q on rare ties (tests/pallas_kernels/test_quantize_act.py).
FUSED_QUANT_MAX_M = 64

# Products with at most this many tokens run the plain-jnp path even when impl="pallas": at M = 1
# XLA turns the int8 product and its epilogue into one fused matrix-vector kernel. Same H100 session,
# llama-2-7b preset, batch-1 decode x bf16: w8a8 1.76x on XLA against 1.53x with the Pallas kernels,
# mix8 1.38x against 1.26x, w8a16 1.82x against 1.67x; at batch 16 the Pallas kernels win (w8a8
# 1.33x against 1.26x, mix8 1.13x against 0.96x). BENCHMARKS.md, issue 6.
XLA_MATMUL_MAX_M = 1


def outlier_weight_columns(params: dict[str, Array], idx: Array, count: Array, calib_count: Array) -> Array:
  """16-bit weight columns [N, C] for the outlier set idx [C] (count valid): stored 16-bit columns
  for the calibration slots (mix8), dequantized int8 columns for slots added later (and for llm_int8).

  Only the added slots gather from W: the others read column 0. A gather of C = 128 random columns
  from a row-major int8 W touches most 32-byte sectors of every row, i.e. re-reads most of W; the
  H100 decode of the llama-2-7b preset ran 2x slower with it than w8a8 (BENCHMARKS.md, issue 6)."""
  w_q, s_w = params["w_q"], params["s_w"]
  c = idx.shape[0]
  slot = jnp.arange(c)
  stored = (slot < calib_count) if "w_o" in params else jnp.zeros((c,), bool)
  gather_idx = jnp.where((slot < count) & ~stored, idx, 0)
  deq = (w_q[:, gather_idx].astype(jnp.float32) * s_w[:, None]).astype(jnp.bfloat16)  # [N, C]
  if "w_o" not in params:
    return deq
  w_o = _pad_to(params["w_o"].astype(jnp.bfloat16), 1, c)  # stored for the calibration slots only: [N, <=C]
  return jnp.where(stored[None, :], w_o, deq)


def outlier_column_cache(variables: dict, plan: QuantPlan) -> dict:
  """The `outlier_cols` collection for variables {"params", "outliers"}: per mix8 layer
  {"w_o": [N, C]}, the columns `outlier_weight_columns` gives for the current outlier sets, and per
  mix8 site {"mask": [Kp] int8}, the site's outlier-column mask (`pk.outlier_mask_from_idx`).

  With it in the variables, a call that does not detect reads these columns instead of
  rebuilding them from W; calls that detect rebuild and store them (runtime.apply_model makes the
  collection mutable then). Derived data, never saved: rebuild it after editing "outliers" by hand."""
  cols: dict = {}
  for path, lq in plan.layers:
    if lq.scheme != "mix8":
      continue
    p, site = _node(variables["params"], path), _node(variables["outliers"], schemes.site_of(path))
    node = cols
    for key in path.split("."):
      node = node.setdefault(key, {})
    node["w_o"] = outlier_weight_columns(p, site["idx"], site["count"], site["calib_count"])
    site_node = cols
    for key in schemes.site_of(path).split("."):
      site_node = site_node.setdefault(key, {})
    site_node["mask"] = pk.outlier_mask_from_idx(site["idx"], site["count"], _round16(p["w_q"].shape[1]))
  return cols


def with_outlier_cache(variables: dict, plan: QuantPlan) -> dict:
  """variables with their `outlier_cols` collection (re)built; unchanged if no layer is mix8."""
  if "outliers" not in variables or not any(lq.scheme == "mix8" for _, lq in plan.layers):
    return variables
  return {**variables, COLS: _outlier_column_cache_jit(variables, plan)}


_outlier_column_cache_jit = jax.jit(outlier_column_cache, static_argnums=1)


def _node(tree: dict, path: str) -> dict:
  for key in path.split("."):
    tree = tree[key]
  return tree


def qmatmul(qa: QAct, params: dict[str, Array], lq: LayerQuant, *, impl: str = "xla", mesh: Any = None,
            role: str | None = None) -> Array:
  """y [M, N] = the scheme's approximation of x Wᵀ (+ b), in the dtype of qa.x.

  Outlier schemes (llm_int8, mix8) take params["w_o"] as the [N, C] 16-bit columns of the whole
  set (`outlier_weight_columns`, global column indices), built before any shard_map splits W.

  With a tensor-parallel `mesh` (axis "tp") and the Pallas kernels, the kernel runs per device
  under shard_map: role "column" (W split along N) gives an N-split y; role "row" (W split along K)
  sums the per-shard partial products with one psum (float32). XLA-only paths (bf16, impl="xla")
  are left to the SPMD partitioner."""
  if lq.scheme in ("bf16", "fp32"):
    w = params["weight"]
    k = w.shape[1]
    out_dtype = qa.x.dtype
    y = jnp.einsum("mk,nk->mn", qa.x[:, :k], w.astype(out_dtype), preferred_element_type=jnp.float32)
    if params.get("bias") is not None:
      y = y + params["bias"].astype(jnp.float32)
    return y.astype(out_dtype)
  if impl == "pallas" and qa.x.shape[0] <= XLA_MATMUL_MAX_M:
    impl = "xla"
  if mesh is not None and impl != "xla" and mesh.size > 1:
    return _sharded_qmatmul(qa, params, lq, impl, mesh, role)
  return _local_qmatmul(qa, params, lq, impl)


def _local_qmatmul(qa: QAct, params: dict[str, Array], lq: LayerQuant, impl: str, out_dtype=None,
                   outlier_count: Array | None = None) -> Array:
  """One device's product; params["w_o"] (outlier schemes) already holds the [N, C] 16-bit columns."""
  out_dtype = out_dtype or qa.x.dtype
  bias = params.get("bias")
  _, w8a8, w8a8o16, w8a16, kw = _kernels(impl)
  w_q, s_w = params["w_q"], params["s_w"]
  n, k = w_q.shape
  np_, kp = _round16(n), _round16(k)  # the kernels need multiples of 16: zero-pad (exact)
  w_qp, s_wp = _pad_to(_pad_to(w_q, 1, kp), 0, np_), _pad_to(s_w, 0, np_)
  bias_p = None if bias is None else _pad_to(bias.astype(jnp.float32), 0, np_)
  if lq.scheme == "w8a16":
    x16 = _fit_k(qa.x, k, kp)
    if x16.dtype not in (jnp.bfloat16, jnp.float16):
      x16 = x16.astype(jnp.bfloat16)
    y = w8a16(x16, w_qp, s_wp, bias_p, out_dtype=out_dtype, **kw)
  elif lq.scheme == "w8a8":
    y = w8a8(_fit_k(qa.x_q, k, kp), qa.s_x, w_qp, s_wp, bias_p, out_dtype=out_dtype, **kw)
  elif lq.scheme in ("llm_int8", "mix8"):
    w_o = _pad_to(params["w_o"], 0, np_)
    count = qa.count if outlier_count is None else outlier_count
    y = w8a8o16(_fit_k(qa.x_q, k, kp), qa.s_x, w_qp, s_wp, qa.x_o, w_o, count, bias_p,
                out_dtype=out_dtype, **kw)
  else:
    raise ValueError(f"scheme {lq.scheme!r} has no matmul")
  return y[:, :n]


def _sharded_qmatmul(qa: QAct, params: dict[str, Array], lq: LayerQuant, impl: str, mesh: Any,
                     role: str | None) -> Array:
  P = jax.sharding.PartitionSpec
  ax = sharding.AXIS
  tp = mesh.shape[ax]
  n, k = params["w_q"].shape
  out_dtype = qa.x.dtype
  # Split exactly as sharding._spec placed the weight (a dimension that does not divide stays whole).
  col = role == "column" and n % tp == 0
  row = role == "row" and k % tp == 0
  qa = qa._replace(x=qa.x[:, :k], x_q=None if qa.x_q is None else qa.x_q[:, :k])  # drop the site's 16-padding
  rep = P()
  p_specs = {name: rep for name in params}
  qa_specs = QAct(*(None if f is None else rep for f in qa))
  out_spec = rep
  if col:
    p_specs.update({name: P(ax) if name in ("s_w", "bias") else P(ax, None) for name in params
                    if name in ("w_q", "s_w", "w_o", "bias")})
    out_spec = P(None, ax)
  elif row:
    p_specs["w_q"] = P(None, ax)
    qa_specs = qa_specs._replace(x=P(None, ax), x_q=None if qa.x_q is None else P(None, ax))

  def body(qa_l: QAct, p_l: dict[str, Array]) -> Array:
    if not row:
      return _local_qmatmul(qa_l, p_l, lq, impl)
    # Row-parallel: every shard multiplies its K slice; the 16-bit outlier product and the bias
    # belong to the sum once, so only shard 0 adds them. Partials are summed in float32.
    first = jax.lax.axis_index(ax) == 0
    if "bias" in p_l:
      p_l = dict(p_l, bias=jnp.where(first, p_l["bias"], jnp.zeros_like(p_l["bias"])))
    count = None if qa_l.count is None else jnp.where(first, qa_l.count, 0).astype(jnp.int32)
    y = _local_qmatmul(qa_l, p_l, lq, impl, out_dtype=jnp.float32, outlier_count=count)
    return jax.lax.psum(y, ax).astype(out_dtype)

  f = sharding.shard_map(body, mesh, in_specs=(qa_specs, p_specs), out_specs=out_spec)
  return f(qa, params)


def _randint8(key, shape, dtype=jnp.int8):
  return jax.random.randint(key, shape, -127, 128, jnp.int32).astype(dtype)


def _scales(key, shape, dtype=jnp.float32):
  return (0.02 / 127) * (1.0 + jax.random.uniform(key, shape, dtype))


class ActQuant(nn.Module):
  """One activation site. __call__(x [B, T, K], valid [B, T] bool, detect) -> QAct with M = B*T.

  mix8 (MixQ online prediction): the outlier set (`outliers` collection: idx [C], count,
  calib_count) starts as the calibration set; while `detect` is on (the model's first calls),
  non-outlier columns with |x| > threshold on valid tokens are appended up to the capacity C,
  and this call already uses the enlarged set. With detect off nothing is checked.
  """

  lq: LayerQuant = BF16
  impl: str = "xla"
  calibrate: bool = False
  mesh: Any = None  # tensor-parallel mesh: the Pallas kernel then runs replicated under shard_map

  @nn.compact
  def __call__(self, x: Array, valid: Array, detect: bool = False) -> QAct:
    b, t, k = x.shape
    x2 = x.reshape(b * t, k)
    vmask = valid.reshape(b * t, 1)
    if self.calibrate:
      a = jnp.where(vmask, jnp.abs(x2.astype(jnp.float32)), 0.0)
      self.sow("calib", "absmax", a.max(axis=0))
      self.sow("calib", "abssum", a.sum(axis=0))
      self.sow("calib", "count", vmask.sum())
    kind = ACT_KIND[self.lq.scheme]
    if kind is None:
      return QAct(x=x2)
    kp = _round16(k)
    x2 = _pad_to(x2, 1, kp)
    quant_act = _kernels(self.impl)[0]
    kw = {} if self.impl == "xla" else {"interpret": self.impl == "interpret"}
    if self.impl == "pallas" and b * t <= FUSED_QUANT_MAX_M:
      quant_act = pk.quantize_act_reference  # plain jnp: the SPMD partitioner handles it under tp too
    elif self.mesh is not None and self.impl != "xla" and self.mesh.size > 1:
      quant_act = _replicated_call(quant_act, self.mesh)
    if kind == "int8":
      # SmoothQuant's x / s is fused into the quantization (float32, no rounded intermediate).
      inv = self.param("smooth_inv", nn.initializers.ones, (k,), jnp.float32) if self.lq.smooth else None
      qa = quant_act(x2, jnp.zeros((0,), jnp.int32), jnp.int32(0),
                     col_scale=None if inv is None else _pad_to(inv, 0, kp), **kw)
      return QAct(x=x2, x_q=qa.x_q, s_x=qa.s_x)
    cap = self.lq.capacity
    absx = jnp.where(vmask, jnp.abs(x2.astype(jnp.float32)), 0.0)
    if kind == "int8_dynamic":  # LLM.int8: this call's columns with any |x| > threshold
      colmax = absx.max(axis=0)  # [Kp]
      hot = colmax > self.lq.threshold
      idx = _top_idx(jnp.where(hot, colmax, -1.0), cap)
      count = jnp.minimum(hot.sum(), cap).astype(jnp.int32)
      calib_count = jnp.int32(0)
    else:  # mix8
      idx_v = self.variable("outliers", "idx", jnp.zeros, (cap,), jnp.int32)
      count_v = self.variable("outliers", "count", lambda: jnp.int32(0))
      calib_v = self.variable("outliers", "calib_count", lambda: jnp.int32(0))
      idx, count, calib_count = idx_v.value, count_v.value, calib_v.value
      if detect:
        idx, count = detect_outliers(absx, idx, count, self.lq.threshold)
        if not self.is_initializing():
          idx_v.value, count_v.value = idx, count
      # The site's outlier mask, cached with the outlier columns (outlier_column_cache): a call that
      # does not detect reads it instead of scattering it anew (96 small scatters per decode step of
      # the llama-2-7b preset, 0.2 ms of 4.9 in the H100 trace, BENCHMARKS.md).
      if not self.is_initializing() and self.has_variable(COLS, "mask"):
        if detect:
          mask = pk.outlier_mask_from_idx(idx, count, kp)
          if self.is_mutable_collection(COLS):
            self.put_variable(COLS, "mask", mask)
        else:
          mask = self.get_variable(COLS, "mask")
        kw["outlier_mask"] = mask
    qa = quant_act(x2, idx, count, **kw)
    return QAct(x=x2, x_q=qa.x_q, s_x=qa.s_x, x_o=qa.x_outlier.astype(jnp.bfloat16), idx=idx, count=count,
                calib_count=calib_count)


def _replicated_call(fn, mesh):
  """fn run on every device with whole (replicated) inputs and outputs: a Pallas call that the SPMD
  partitioner cannot split. A K-split input (row-parallel sites) is all-gathered first, because the
  per-token scale is a max over all of K."""
  P = jax.sharding.PartitionSpec

  def call(*args, **kwargs):
    static = {k: v for k, v in kwargs.items() if not isinstance(v, jax.Array)}
    dyn = {k: v for k, v in kwargs.items() if isinstance(v, jax.Array)}
    body = lambda a, d: fn(*a, **d, **static)  # noqa: E731
    return sharding.shard_map(body, mesh, in_specs=P(), out_specs=P())(args, dyn)
  return call


def _top_idx(scores: Array, c: int) -> Array:
  """Indices [C] int32 of the largest scores (C may exceed len(scores): zero-padded)."""
  idx = jax.lax.top_k(scores, min(c, scores.shape[0]))[1].astype(jnp.int32)
  return jnp.pad(idx, (0, c - idx.shape[0]))


def detect_outliers(absx: Array, idx: Array, count: Array, threshold: float) -> tuple[Array, Array]:
  """Appends to the outlier set (idx [C], count) the non-outlier columns of absx [M, K] whose max
  exceeds threshold, largest first, up to the capacity C. Returns the new (idx, count)."""
  c = idx.shape[0]
  k = absx.shape[1]
  slots = jnp.arange(c)
  is_out = jnp.zeros((k,), bool).at[jnp.where(slots < count, idx, k)].set(True, mode="drop")
  colmax = jnp.where(is_out, 0.0, absx.max(axis=0))
  new = colmax > threshold
  cand = _top_idx(jnp.where(new, colmax, -1.0), c)
  n_add = jnp.minimum(new.sum(), c - count)
  pos = slots - count
  take = (pos >= 0) & (pos < n_add)
  idx = jnp.where(take, cand[jnp.clip(pos, 0, c - 1)], idx)
  return idx, (count + n_add).astype(jnp.int32)


class QuantDense(nn.Module):
  """Linear layer y = x Wᵀ + b, W [N, K], stored as the layer's scheme says:

  bf16/fp32: weight [N, K]; w8a16, w8a8, llm_int8: w_q int8 [N, K] + s_w f32 [N];
  mix8: also w_o bf16 [N, n] (16-bit weight columns of the n <= C calibration outliers); bias [N] if any.
  Takes a QAct from the layer's site, or a plain array [..., K] for 16-bit-activation schemes.
  """

  in_features: int  # K
  features: int  # N
  use_bias: bool = False
  param_dtype: Any = jnp.bfloat16
  impl: str = "xla"
  lq: LayerQuant = BF16
  mesh: Any = None  # tensor-parallel mesh (mixq_jax.sharding); the layer's name gives its role
  detect: bool = False  # this call may grow the site's outlier set (mix8): the column cache is stale

  @nn.compact
  def __call__(self, qa: QAct | Array) -> Array:  # -> [M, N] (or [..., N] for an array input)
    lead = None
    if not isinstance(qa, QAct):
      lead, qa = qa.shape[:-1], QAct(x=qa.reshape(-1, qa.shape[-1]))
    n, k, s = self.features, self.in_features, self.lq.scheme
    params: dict[str, Array] = {}
    if s in ("bf16", "fp32"):
      params["weight"] = self.param("weight", nn.initializers.normal(0.02), (n, k), self.param_dtype)
    else:
      params["w_q"] = self.param("w_q", _randint8, (n, k))
      params["s_w"] = self.param("s_w", _scales, (n,))
      if s == "mix8":
        # Stored width is the site's calibration count (<= C), so read it as is rather than declare a shape.
        params["w_o"] = (self.get_variable("params", "w_o") if self.has_variable("params", "w_o") else
                         self.param("w_o", nn.initializers.normal(0.02), (n, self.lq.capacity), jnp.bfloat16))
    if self.use_bias:
      params["bias"] = self.param("bias", nn.initializers.zeros, (n,), self.param_dtype)
    if s in ("llm_int8", "mix8"):
      params["w_o"] = self._outlier_columns(params, qa)
    role = None if self.mesh is None else sharding.layer_role(self.name)
    y = qmatmul(qa, params, self.lq, impl=self.impl, mesh=self.mesh, role=role)
    return y if lead is None else y.reshape(*lead, n)

  def _outlier_columns(self, params: dict[str, Array], qa: QAct) -> Array:
    """[N, C] 16-bit columns of the current outlier set: read from the `outlier_cols` cache when
    the variables carry one and this call does not detect; else rebuilt, and stored back when the
    cache exists and is mutable (runtime.apply_model's detecting calls)."""
    cached = self.lq.scheme == "mix8" and not self.is_initializing() and self.has_variable(COLS, "w_o")
    if cached and not self.detect:
      return self.get_variable(COLS, "w_o")
    cols = outlier_weight_columns(params, qa.idx, qa.count, qa.calib_count)
    if cached and self.is_mutable_collection(COLS):
      self.put_variable(COLS, "w_o", cols)
    return cols
