"""Quantization schemes as data: the registry of named schemes, per-layer rules, and the plan.

A `QuantPlan` says, for every Dense layer path of a model ("layers_3.self_attn.q_proj",
"layers_3.mlp.down_proj", "lm_head"), which `LayerQuant` it uses. It is built from a default scheme
plus rules (regex on the layer path -> scheme and options), is recorded in the checkpoint's
quant.json, and is static model structure (hashable) at run time. Definitions: ../shared/DESIGN.md.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable

# How a scheme treats the activation of its site (see layers.ActQuant).
ACT_KIND: dict[str, str | None] = {
    "bf16": None, "fp32": None, "w8a16": None,
    "w8a8": "int8", "llm_int8": "int8_dynamic", "mix8": "int8_outliers",
}

# Variable collection of derived, never-saved state: each mix8 layer's 16-bit weight columns
# [N, C] for its current outlier set (layers.outlier_column_cache).
OUTLIER_COLS = "outlier_cols"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SchemeInfo:
  name: str
  upstream: str
  description: str
  w_bits: int
  a_bits: int
  needs_calibration: bool = False


SCHEMES: dict[str, SchemeInfo] = {s.name: s for s in [
    SchemeInfo(name="bf16", upstream="-", description="bfloat16 weights and activations (the baseline)",
               w_bits=16, a_bits=16),
    SchemeInfo(name="fp32", upstream="-", description="float32 weights (reference / parity checks)",
               w_bits=32, a_bits=32),
    SchemeInfo(name="w8a16", upstream="EETQ", description="int8 per-channel weights, bf16 activations",
               w_bits=8, a_bits=16),
    SchemeInfo(name="w8a8", upstream="SmoothQuant",
               description="int8 per-channel weights after smoothing, int8 per-token activations",
               w_bits=8, a_bits=8, needs_calibration=True),
    SchemeInfo(name="llm_int8", upstream="LLM.int8 (bitsandbytes)",
               description="int8 weights and activations; columns with |x| > 6 per call in 16-bit "
                           "(times the dequantized int8 weights)", w_bits=8, a_bits=8),
    SchemeInfo(name="mix8", upstream="MixQ W8A8O16",
               description="int8 weights and activations; up to C outlier columns in 16-bit (16-bit weight "
                           "columns), predicted online from the calibration set", w_bits=8, a_bits=8,
               needs_calibration=True),
]}


def get_scheme(name: str) -> SchemeInfo:
  try:
    return SCHEMES[name]
  except KeyError:
    raise ValueError(f"unknown scheme {name!r}; available: {', '.join(SCHEMES)}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerQuant:
  """How one Dense layer (and the activation site in front of it) is quantized."""
  scheme: str = "bf16"
  capacity: int = 0  # outlier slots C (llm_int8, mix8)
  threshold: float = 6.0  # |x| above which a column is an outlier (σ)
  smooth: bool = False  # w8a8: x is multiplied by stored 1/s (SmoothQuant) before quantization

  def __post_init__(self):
    get_scheme(self.scheme)
    if ACT_KIND[self.scheme] in ("int8_dynamic", "int8_outliers") and self.capacity < 1:
      raise ValueError(f"scheme {self.scheme} needs an outlier capacity >= 1, got {self.capacity}")


@dataclasses.dataclass(frozen=True)
class QuantPlan:
  """Per-layer LayerQuant for every Dense layer path; absent paths are bf16."""
  layers: tuple[tuple[str, LayerQuant], ...] = ()
  detect_calls: int = 2  # mix8: model calls that may grow the outlier sets before they freeze

  def get(self, path: str) -> LayerQuant:
    return self._table().get(path, LayerQuant())

  def _table(self) -> dict[str, LayerQuant]:
    return dict(self.layers)

  @property
  def quantized(self) -> bool:
    return any(lq.scheme not in ("bf16", "fp32") for _, lq in self.layers)

  def to_dict(self) -> dict[str, Any]:
    return {"detect_calls": self.detect_calls, "layers": {p: dataclasses.asdict(lq) for p, lq in self.layers}}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "QuantPlan":
    try:
      return cls(tuple((p, LayerQuant(**v)) for p, v in d.get("layers", {}).items()), int(d.get("detect_calls", 2)))
    except TypeError as e:
      raise ValueError(f"corrupt quantization plan in quant.json: {e}") from None


@dataclasses.dataclass(frozen=True)
class Rule:
  """`PATTERN=SCHEME[:key=value,...]`: layers whose path matches PATTERN (re.search) use SCHEME."""
  pattern: str
  scheme: str
  options: tuple[tuple[str, Any], ...] = ()

  @classmethod
  def parse(cls, text: str) -> "Rule":
    if "=" not in text:
      raise ValueError(f"rule {text!r} must look like PATTERN=SCHEME[:key=value,...]")
    pattern, _, rest = text.partition("=")
    scheme, _, opts = rest.partition(":")
    try:
      re.compile(pattern)
    except re.error as e:
      raise ValueError(f"rule {text!r}: bad regular expression ({e})") from None
    get_scheme(scheme)
    options = []
    for kv in filter(None, opts.split(",")):
      key, _, val = kv.partition("=")
      if key not in ("capacity", "threshold"):
        raise ValueError(f"rule {text!r}: unknown option {key!r} (capacity, threshold)")
      options.append((key, int(val) if key == "capacity" else float(val)))
    return cls(pattern, scheme, tuple(options))


def site_of(path: str) -> str:
  """The activation site a Dense layer reads from (layers of one site share its quantization)."""
  head, _, name = path.rpartition(".")
  site = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "query_key_value": "attn_in",
          "o_proj": "o_in", "dense": "o_in", "gate_proj": "mlp_in", "up_proj": "mlp_in", "dense_h_to_4h": "mlp_in",
          "down_proj": "down_in", "dense_4h_to_h": "down_in", "lm_head": "head_in"}[name]
  return f"{head}.{site}" if head else site


def build_plan(layer_paths: Iterable[str], scheme: str, rules: Iterable[Rule] = (), *, capacity: int = 128,
               threshold: float = 6.0, smooth: bool = True, detect_calls: int = 2,
               quantize_head: bool = False) -> QuantPlan:
  """Default `scheme` for every layer (the LM head stays bf16 unless quantize_head or a rule says
  otherwise), then rules in order (later rules win). Every rule must match at least one layer, and
  layers sharing an activation site must end up with the same LayerQuant."""
  paths = list(layer_paths)
  rules = list(rules)

  def make(s: str, opts: dict) -> LayerQuant:
    kind = ACT_KIND[get_scheme(s).name]
    outl = kind in ("int8_dynamic", "int8_outliers")
    return LayerQuant(scheme=s, capacity=int(opts.get("capacity", capacity)) if outl else 0,
                      threshold=float(opts.get("threshold", threshold)) if outl else 6.0,
                      smooth=smooth and s == "w8a8")

  table = {p: make("bf16" if (p == "lm_head" and not quantize_head) else scheme, {}) for p in paths}
  for r in rules:
    hits = [p for p in paths if re.search(r.pattern, p)]
    if not hits:
      raise ValueError(f"rule {r.pattern}={r.scheme} matches no layer (layer paths look like {paths[0]!r})")
    for p in hits:
      table[p] = make(r.scheme, dict(r.options))
  sites: dict[str, tuple[str, LayerQuant]] = {}
  for p, lq in table.items():
    s = site_of(p)
    if s in sites and sites[s][1] != lq:
      raise ValueError(f"layers {sites[s][0]} and {p} read the same activation and must share a scheme, "
                       f"got {sites[s][1]} and {lq}")
    sites.setdefault(s, (p, lq))
  return QuantPlan(tuple(table.items()), detect_calls)
