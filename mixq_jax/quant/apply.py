"""Apply a QuantPlan to float parameters: the stored (packed) form of every layer and site."""

from __future__ import annotations

import collections
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mixq_jax.quant.calibrate import SiteStats
from mixq_jax.quant.mixq import initial_outliers
from mixq_jax.quant.rtn import quantize_int8_per_channel
from mixq_jax.quant.smoothquant import smoothing_factors
from mixq_jax.schemes import QuantPlan, site_of


def _node(tree: dict, path: str, create: bool = False) -> dict:
  for key in path.split("."):
    if create:
      tree = tree.setdefault(key, {})
    else:
      tree = tree[key]
  return tree


def quantize_variables(params: dict[str, Any], plan: QuantPlan, stats: dict[str, SiteStats] | None = None, *,
                       smooth_alpha: float = 0.5, outlier_k: int | None = None,
                       float_dtype=jnp.bfloat16) -> dict[str, Any]:
  """float params (params_from_hf) -> {"params": ..., "outliers": ...} for `plan`.

  stats: calibration statistics per site (needed by w8a8 with smoothing and by mix8).
  outlier_k: mix8 initial set size (default: half of each site's capacity).
  """
  f32 = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  out = jax.tree.map(lambda a: np.asarray(jnp.asarray(a, float_dtype)), f32)  # norms, embedding, bf16 layers
  outliers: dict[str, Any] = {}
  by_site: dict[str, list[str]] = collections.defaultdict(list)
  for path, _ in plan.layers:
    by_site[site_of(path)].append(path)
  for site, layers in by_site.items():
    lq = plan.get(layers[0])
    if lq.scheme in ("bf16", "fp32"):
      continue
    weights = {p: _node(f32, p)["weight"] for p in layers}
    k = next(iter(weights.values())).shape[1]
    ignore = None
    if lq.scheme == "w8a8" and lq.smooth:
      st = _stats(stats, site, lq.scheme)
      s = smoothing_factors(st.absmax, list(weights.values()), smooth_alpha)
      weights = {p: w * s[None, :] for p, w in weights.items()}
      _node(out, site, create=True)["smooth_inv"] = (1.0 / s).astype(np.float32)
    if lq.scheme == "mix8":
      st = _stats(stats, site, lq.scheme)
      idx, n = initial_outliers(st.absmax, lq.capacity, lq.threshold,
                                lq.capacity // 2 if outlier_k is None else outlier_k)
      ignore = np.zeros(k, bool)
      ignore[idx[:n]] = True
      _node(outliers, site, create=True).update(
          idx=idx, count=np.array(n, np.int32), calib_count=np.array(n, np.int32))
    for p, w in weights.items():
      node = _node(out, p)
      del node["weight"]
      node["w_q"], node["s_w"] = quantize_int8_per_channel(w, ignore)
      if lq.scheme == "mix8":
        # Only the calibration columns have stored 16-bit weights; columns added online use int8.
        n = int(_node(outliers, site)["count"])
        node["w_o"] = np.asarray(jnp.asarray(w[:, _node(outliers, site)["idx"][:n]], jnp.bfloat16))  # [N, n]
      if "bias" in node:
        node["bias"] = _node(f32, p)["bias"].astype(np.float32)
  variables = {"params": out}
  if outliers:
    variables["outliers"] = outliers
  return variables


def _stats(stats, site: str, scheme: str) -> SiteStats:
  if not stats or site not in stats:
    raise ValueError(f"scheme {scheme} needs calibration statistics for site {site}; run with calibration data")
  return stats[site]
