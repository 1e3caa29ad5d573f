"""ModelConfig: the frozen description of a decoder, built from a HuggingFace config.json.

Supported families: Llama (2, 3, 3.1 with llama3 rope scaling), Mistral (sliding window), Qwen2
(q/k/v bias, per-layer sliding window) and Falcon (7B style multi-query + parallel attention, and the
40B/180B `new_decoder_architecture` with grouped KV). Anything the models cannot compute exactly
(ALiBi, unknown rope types, unknown model_type, ...) is refused with an error naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Literal

Family = Literal["llama", "falcon"]
QKVLayout = Literal["separate", "falcon_mqa", "falcon_mha", "falcon_grouped"]


class ConfigError(ValueError):
  """A HF config field that mixq_jax cannot honour."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeConfig:
  theta: float = 10000.0
  type: Literal["default", "linear", "llama3"] = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0  # llama3 only
  high_freq_factor: float = 4.0  # llama3 only
  original_max_position_embeddings: int = 8192  # llama3 only


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """Shape letters used across the models: B batch, T query length, S key/cache length,
  D hidden size, H query heads, G kv heads, Dh head dim, F MLP hidden size, V vocab size."""

  model_type: str  # the HF model_type this came from
  family: Family  # which module implements it
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  max_position_embeddings: int
  norm: Literal["rms", "layer"] = "rms"
  norm_eps: float = 1e-6
  rope: RopeConfig = RopeConfig()
  activation: Literal["silu", "gelu"] = "silu"
  gated_mlp: bool = True  # SwiGLU gate/up/down (Llama family) vs up/down (Falcon)
  tie_word_embeddings: bool = False
  qkv_bias: bool = False  # Qwen2 and Llama's attention_bias
  o_bias: bool = False
  mlp_bias: bool = False
  qkv_layout: QKVLayout = "separate"  # Falcon fuses q/k/v into one Dense
  # Falcon: attention and MLP read the same normed input and are summed (parallel_attn).
  parallel_attn: bool = False
  num_ln_in_parallel_attn: int = 1  # Falcon new_decoder_architecture: ln_attn + ln_mlp when 2
  # Per-layer sliding window (None = full attention). Tuple so the config stays hashable.
  sliding_windows: tuple[int | None, ...] = ()
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}")
    if self.sliding_windows and len(self.sliding_windows) != self.num_layers:
      raise ConfigError(f"{len(self.sliding_windows)=} does not match num_hidden_layers={self.num_layers}")

  def window(self, layer: int) -> int | None:
    return self.sliding_windows[layer] if self.sliding_windows else None

  # --- serialisation (checkpoints store this dict) ---
  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    d = dict(d)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ConfigError(f"unknown ModelConfig fields {sorted(unknown)}")
    d["rope"] = RopeConfig(**d.get("rope", {}))
    d["sliding_windows"] = tuple(d.get("sliding_windows", ()))
    d["eos_token_ids"] = tuple(d.get("eos_token_ids", ()))
    return cls(**d)

  # --- HF ---
  @classmethod
  def from_hf_file(cls, path: str | pathlib.Path) -> "ModelConfig":
    path = pathlib.Path(path)
    if path.is_dir():
      path = path / "config.json"
    if not path.exists():
      raise FileNotFoundError(f"no HF config at {path}")
    return cls.from_hf(json.loads(path.read_text()))

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> "ModelConfig":
    model_type = hf.get("model_type")
    if model_type in ("llama", "mistral", "qwen2"):
      return _from_hf_llama_family(hf)
    if model_type == "falcon":
      return _from_hf_falcon(hf)
    raise ConfigError(f"model_type={model_type!r} is not supported (supported: llama, mistral, qwen2, falcon)")


def _eos_ids(hf: dict[str, Any]) -> tuple[int, ...]:
  eos = hf.get("eos_token_id")
  if eos is None:
    return ()
  return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)


def _rope(hf: dict[str, Any], default_theta: float = 10000.0) -> RopeConfig:
  """Reads rope settings from `rope_scaling` (transformers 4.x) or `rope_parameters` (5.x)."""
  params = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  merged = {**scaling, **params}
  theta = float(merged.get("rope_theta", hf.get("rope_theta", default_theta)))
  rope_type = merged.get("rope_type", merged.get("type", "default"))
  if rope_type == "default":
    return RopeConfig(theta=theta)
  if rope_type == "linear":
    return RopeConfig(theta=theta, type="linear", factor=float(merged["factor"]))
  if rope_type == "llama3":
    try:
      return RopeConfig(
          theta=theta,
          type="llama3",
          factor=float(merged["factor"]),
          low_freq_factor=float(merged["low_freq_factor"]),
          high_freq_factor=float(merged["high_freq_factor"]),
          original_max_position_embeddings=int(merged["original_max_position_embeddings"]),
      )
    except KeyError as e:
      raise ConfigError(f"rope_scaling of type llama3 lacks the field {e.args[0]!r}") from None
  field = "rope_parameters" if params else "rope_scaling"
  raise ConfigError(f"{field}.rope_type={rope_type!r} is not supported (supported: default, linear, llama3)")


def _refuse(hf: dict[str, Any], field: str, ok) -> None:
  if field in hf and hf[field] is not None and not ok(hf[field]):
    raise ConfigError(f"{field}={hf[field]!r} is not supported for model_type={hf.get('model_type')!r}")


def _from_hf_llama_family(hf: dict[str, Any]) -> ModelConfig:
  mt = hf["model_type"]
  _refuse(hf, "hidden_act", lambda v: v == "silu")
  _refuse(hf, "pretraining_tp", lambda v: v in (1, None))
  _refuse(hf, "partial_rotary_factor", lambda v: v == 1.0)
  n_heads = hf["num_attention_heads"]
  n_kv = hf.get("num_key_value_heads") or n_heads
  head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
  n_layers = hf["num_hidden_layers"]
  windows: tuple[int | None, ...] = ()
  if mt == "mistral" and hf.get("sliding_window"):
    windows = (int(hf["sliding_window"]),) * n_layers
  if mt == "qwen2" and hf.get("use_sliding_window") and hf.get("sliding_window"):
    # Qwen2 applies the window only from layer max_window_layers on (HF layer_types).
    types = hf.get("layer_types") or [
        "sliding_attention" if i >= hf.get("max_window_layers", 28) else "full_attention" for i in range(n_layers)]
    windows = tuple(int(hf["sliding_window"]) if t == "sliding_attention" else None for t in types)
  attention_bias = bool(hf.get("attention_bias", False))
  return ModelConfig(
      model_type=mt,
      family="llama",
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"],
      num_layers=n_layers,
      num_heads=n_heads,
      num_kv_heads=n_kv,
      head_dim=head_dim,
      max_position_embeddings=hf.get("max_position_embeddings", 2048),
      norm="rms",
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      rope=_rope(hf, 1000000.0 if mt == "qwen2" else 10000.0),
      activation="silu",
      gated_mlp=True,
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      qkv_bias=True if mt == "qwen2" else attention_bias,
      o_bias=attention_bias if mt == "llama" else False,
      mlp_bias=bool(hf.get("mlp_bias", False)) if mt == "llama" else False,
      sliding_windows=windows,
      bos_token_id=hf.get("bos_token_id"),
      eos_token_ids=_eos_ids(hf),
  )


def _from_hf_falcon(hf: dict[str, Any]) -> ModelConfig:
  if hf.get("alibi"):
    raise ConfigError("alibi=True is not supported (only rotary Falcon models)")
  _refuse(hf, "activation", lambda v: v == "gelu")
  hidden = hf.get("hidden_size", hf.get("n_embed"))
  n_heads = hf.get("num_attention_heads", hf.get("n_head"))
  n_layers = hf.get("num_hidden_layers", hf.get("n_layer"))
  new_arch = bool(hf.get("new_decoder_architecture", False))
  multi_query = bool(hf.get("multi_query", True))
  if new_arch:
    n_kv = hf.get("num_kv_heads") or n_heads
    layout: QKVLayout = "falcon_grouped"
    n_ln = hf.get("num_ln_in_parallel_attn") or 2
  elif multi_query:
    n_kv, layout, n_ln = 1, "falcon_mqa", 1
  else:
    n_kv, layout, n_ln = (hf.get("num_kv_heads") or n_heads), "falcon_mha", 1
    if n_kv != n_heads:
      raise ConfigError(f"num_kv_heads={n_kv} with multi_query=False and no new_decoder_architecture is not a Falcon layout")
  bias = bool(hf.get("bias", False))
  return ModelConfig(
      model_type="falcon",
      family="falcon",
      vocab_size=hf["vocab_size"],
      hidden_size=hidden,
      intermediate_size=hf.get("ffn_hidden_size") or 4 * hidden,
      num_layers=n_layers,
      num_heads=n_heads,
      num_kv_heads=n_kv,
      head_dim=hidden // n_heads,
      max_position_embeddings=hf.get("max_position_embeddings", 2048),
      norm="layer",
      norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
      rope=_rope(hf),
      activation="gelu",
      gated_mlp=False,
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
      qkv_bias=bias,
      o_bias=bias,
      mlp_bias=bias,
      qkv_layout=layout,
      parallel_attn=True if new_arch else bool(hf.get("parallel_attn", True)),
      num_ln_in_parallel_attn=n_ln,
      bos_token_id=hf.get("bos_token_id"),
      eos_token_ids=_eos_ids(hf),
  )
