"""Import a llama-architecture GGUF file (llama.cpp) as HF-named float32 tensors and a HF config.

Shape letters: V vocab size, D hidden size, F intermediate size, H attention heads,
KV key/value heads, Dh head dim.
"""

import collections
import pathlib
import re

import numpy as np
from tqdm.auto import tqdm

from mixq_jax.io.raw import RawModel

# Names of the gguf.GGMLQuantizationType members this importer dequantizes.
SUPPORTED_TYPES = frozenset({"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"})


def _gguf():
  """The gguf package, imported on first use: HF checkpoints and converted ones load without it."""
  try:
    import gguf  # noqa: PLC0415
  except ImportError as e:
    raise ImportError("reading .gguf files needs the `gguf` package (pip install gguf)") from e
  return gguf

# GGUF tensor names (llama.cpp's "standardized tensor names") -> HF llama names.
_GLOBAL_NAMES = {
  "token_embd.weight": "model.embed_tokens.weight",
  "output_norm.weight": "model.norm.weight",
  "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
  "attn_q": "self_attn.q_proj",
  "attn_k": "self_attn.k_proj",
  "attn_v": "self_attn.v_proj",
  "attn_output": "self_attn.o_proj",
  "ffn_gate": "mlp.gate_proj",
  "ffn_up": "mlp.up_proj",
  "ffn_down": "mlp.down_proj",
  "attn_norm": "input_layernorm",
  "ffn_norm": "post_attention_layernorm",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
_REQUIRED = object()


def load_gguf(path: str | pathlib.Path) -> RawModel:
  """Reads, checks and dequantizes every tensor of a llama GGUF file into HF names and layout."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
  gguf = _gguf()
  reader = gguf.GGUFReader(path)
  hf_config = gguf_hf_config(reader, path)

  hf_names = {t.name: gguf_to_hf_name(t.name) for t in reader.tensors}
  if len(hf_names) != len(reader.tensors):
    counts = collections.Counter(t.name for t in reader.tensors)
    raise ValueError(f"{path.name}: duplicate tensor names {sorted(n for n, c in counts.items() if c > 1)}")
  # ggml lists dims innermost first: a [out, in] matrix has t.shape == [in, out].
  shapes = {hf_names[t.name]: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}
  check_llama_shapes(shapes, hf_config, where=path.name)
  bad = {t.name: t.tensor_type.name for t in reader.tensors if t.tensor_type.name not in SUPPORTED_TYPES}
  if bad:
    raise ValueError(
      f"{path.name}: tensors of unsupported GGML types {bad}; supported: {sorted(SUPPORTED_TYPES)}"
    )

  n_head, n_kv = hf_config["num_attention_heads"], hf_config["num_key_value_heads"]
  tensors = {}
  for t in tqdm(reader.tensors, desc=f"dequantizing {path.name}", unit="tensor", disable=None):
    name = hf_names[t.name]
    # np.array copies out of the read-only memmap; F32 "dequantization" is only a view.
    w = np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    if w.shape != shapes[name]:
      raise ValueError(
        f"{path.name}: {t.name} ({t.tensor_type.name}) dequantized to {w.shape}, expected {shapes[name]}"
      )
    if name.endswith("q_proj.weight"):
      w = unpermute_qk(w, n_head)
    elif name.endswith("k_proj.weight"):
      w = unpermute_qk(w, n_kv)
    tensors[name] = w
  return RawModel(hf_config=hf_config, tensors=tensors, source=str(path.resolve()))


def load_gguf_tokenizer(path: str | pathlib.Path):
  """The transformers tokenizer that the GGUF's tokenizer.ggml.* metadata describes."""
  from transformers import AutoTokenizer  # slow import; only the tokenizer needs it

  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
  try:
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  except Exception as e:
    # Checked only on failure: parsing the metadata again costs seconds for a 50k vocabulary.
    if "tokenizer.ggml.model" not in _gguf().GGUFReader(path).fields:
      raise ValueError(
        f"{str(path)!r} carries no tokenizer (no tokenizer.ggml.model); use a HF tokenizer instead"
      ) from e
    raise


def gguf_to_hf_name(name: str) -> str:
  """HF llama name of a GGUF tensor name.

  E.g. blk.3.attn_q.weight -> model.layers.3.self_attn.q_proj.weight.
  """
  if name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[name]
  if (m := _LAYER_RE.fullmatch(name)) and m.group(2) in _LAYER_NAMES:
    return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
  if name == "rope_freqs.weight":
    raise ValueError(
      f"GGUF tensor {name!r} holds llama3-style RoPE scaling factors, which this importer "
      "does not support; load the HF checkpoint instead"
    )
  raise ValueError(
    f"unknown GGUF tensor name {name!r}; known: {sorted(_GLOBAL_NAMES)} and blk.N.<{'|'.join(_LAYER_NAMES)}>.weight"
  )


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """llama.cpp's convert_hf_to_gguf permutation of q/k rows: [n_head * Dh, ...] -> same shape.

  HF's rotate_half pairs dims (i, i + Dh/2) of each head; ggml's RoPE pairs (2i, 2i + 1), so the
  converter interleaves the two halves of every head's rows.
  """
  _check_heads(w, n_head)
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of permute_qk: GGUF row order back to HF's."""
  _check_heads(w, n_head)
  return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _check_heads(w: np.ndarray, n_head: int) -> None:
  if w.shape[0] % (2 * n_head):
    raise ValueError(f"q/k rows {w.shape[0]=} must be divisible by 2 * {n_head=}")


def llama_tensor_shapes(hf_config: dict) -> dict[str, tuple[int, ...]]:
  """HF tensor name -> shape of every weight a llama checkpoint with this config holds."""
  V, D, F = hf_config["vocab_size"], hf_config["hidden_size"], hf_config["intermediate_size"]
  H, KV = hf_config["num_attention_heads"], hf_config["num_key_value_heads"]
  Dh = hf_config.get("head_dim") or D // H
  shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
  if not hf_config.get("tie_word_embeddings", False):
    shapes["lm_head.weight"] = (V, D)
  for i in range(hf_config["num_hidden_layers"]):
    p = f"model.layers.{i}."
    shapes |= {
      p + "self_attn.q_proj.weight": (H * Dh, D),
      p + "self_attn.k_proj.weight": (KV * Dh, D),
      p + "self_attn.v_proj.weight": (KV * Dh, D),
      p + "self_attn.o_proj.weight": (D, H * Dh),
      p + "mlp.gate_proj.weight": (F, D),
      p + "mlp.up_proj.weight": (F, D),
      p + "mlp.down_proj.weight": (D, F),
      p + "input_layernorm.weight": (D,),
      p + "post_attention_layernorm.weight": (D,),
    }
  return shapes


def check_llama_shapes(shapes: dict[str, tuple[int, ...]], hf_config: dict, where: str) -> None:
  """Raises ValueError listing every missing, extra or mis-shaped tensor."""
  expected = llama_tensor_shapes(hf_config)
  errors = []
  if missing := sorted(expected.keys() - shapes.keys()):
    errors.append(f"missing tensors {missing[:8]}" + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
  if extra := sorted(shapes.keys() - expected.keys()):
    errors.append(f"unexpected tensors {extra[:8]}" + (f" and {len(extra) - 8} more" if len(extra) > 8 else ""))
  for name in sorted(expected.keys() & shapes.keys()):
    if shapes[name] != expected[name]:
      errors.append(f"{name}: expected shape {expected[name]}, got {shapes[name]}")
  if errors:
    raise ValueError(f"{where}: tensors do not match the llama config: " + "; ".join(errors))


def gguf_hf_config(reader, path: pathlib.Path) -> dict:
  """The HF config.json dict (LlamaForCausalLM) that the GGUF metadata describes."""

  def field(key: str, default=_REQUIRED):
    if key in reader.fields:
      return reader.fields[key].contents()
    if default is _REQUIRED:
      raise ValueError(f"{path.name}: required GGUF metadata key {key!r} is missing")
    return default

  arch = field("general.architecture")
  if arch != "llama":
    raise ValueError(f"{path.name}: GGUF architecture {arch!r} is not supported; only 'llama' is")
  if field("llama.expert_count", 0):
    raise ValueError(
      f"{path.name}: mixture-of-experts llama GGUFs ({field('llama.expert_count')} experts) are not supported"
    )

  D = int(field("llama.embedding_length"))
  H = int(field("llama.attention.head_count"))
  KV = int(field("llama.attention.head_count_kv", H))
  if D % H and "llama.attention.key_length" not in reader.fields:
    raise ValueError(
      f"{path.name}: embedding_length {D=} is not divisible by head_count {H=} and no key_length is given"
    )
  Dh = int(field("llama.attention.key_length", D // H))
  if (Dv := int(field("llama.attention.value_length", Dh))) != Dh:
    raise ValueError(f"{path.name}: key_length {Dh} != value_length {Dv} is not a llama layout")
  if (rot := int(field("llama.rope.dimension_count", Dh))) != Dh:
    raise ValueError(
      f"{path.name}: partial rotary embeddings (rope.dimension_count={rot}, head dim {Dh}) are not supported"
    )
  if H % KV:
    raise ValueError(f"{path.name}: head_count {H=} must be a multiple of head_count_kv {KV=}")

  if "tokenizer.ggml.tokens" in reader.fields:
    vocab_size = len(reader.fields["tokenizer.ggml.tokens"].data)
  else:
    vocab_size = int(field("llama.vocab_size"))
  has_output = any(t.name == "output.weight" for t in reader.tensors)

  hf_config = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": vocab_size,
    "hidden_size": D,
    "intermediate_size": int(field("llama.feed_forward_length")),
    "num_hidden_layers": int(field("llama.block_count")),
    "num_attention_heads": H,
    "num_key_value_heads": KV,
    "head_dim": Dh,
    "hidden_act": "silu",
    "max_position_embeddings": int(field("llama.context_length")),
    "rms_norm_eps": _f32(field("llama.attention.layer_norm_rms_epsilon")),
    "rope_theta": _f32(field("llama.rope.freq_base", 10000.0)),  # llama.cpp's default
    "rope_scaling": _rope_scaling(field, path),
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": not has_output,
    "torch_dtype": "float32",  # dequantized
  }
  for gguf_key, hf_key in (("bos", "bos"), ("eos", "eos"), ("padding", "pad")):
    if (token_id := field(f"tokenizer.ggml.{gguf_key}_token_id", None)) is not None:
      hf_config[f"{hf_key}_token_id"] = int(token_id)
  return hf_config


def _rope_scaling(field, path: pathlib.Path) -> dict | None:
  kind = field("llama.rope.scaling.type", "none")
  factor = field("llama.rope.scaling.factor", None)
  if kind == "none" or (kind == "linear" and factor in (None, 1.0)):
    return None
  if kind == "linear":
    return {"rope_type": "linear", "factor": _f32(field("llama.rope.scaling.factor"))}
  if kind == "yarn":
    scaling = {"rope_type": "yarn", "factor": _f32(field("llama.rope.scaling.factor"))}
    if (orig := field("llama.rope.scaling.original_context_length", None)) is not None:
      scaling["original_max_position_embeddings"] = int(orig)
    return scaling
  raise ValueError(f"{path.name}: rope scaling type {kind!r} is not supported (none, linear, yarn are)")


def _f32(x) -> float:
  # GGUF stores float32; its shortest repr gives back the config value (1e-05, not 9.99999974e-06).
  return float(str(np.float32(x)))
