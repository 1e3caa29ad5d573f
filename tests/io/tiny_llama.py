"""Test helpers (imported by tests/io/test_*.py): tiny llama checkpoints written on the fly, as
HF-named float32 tensors, HF directories and GGUF files."""

import json
import pathlib

import gguf
import numpy as np

from mixq_jax.io import llama_tensor_shapes, permute_qk

QType = gguf.GGMLQuantizationType

# Inner dims are multiples of 32 so every GGML block format applies; H != KV exercises GQA.
TINY_CONFIG = {
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "vocab_size": 40,
  "hidden_size": 64,
  "intermediate_size": 96,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "head_dim": 16,
  "hidden_act": "silu",
  "max_position_embeddings": 256,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "rope_scaling": None,
  "attention_bias": False,
  "mlp_bias": False,
  "tie_word_embeddings": True,
  "torch_dtype": "float32",
  "bos_token_id": 1,
  "eos_token_id": 2,
}

_HF_TO_GGUF = {
  "model.embed_tokens": "token_embd",
  "model.norm": "output_norm",
  "lm_head": "output",
  "self_attn.q_proj": "attn_q",
  "self_attn.k_proj": "attn_k",
  "self_attn.v_proj": "attn_v",
  "self_attn.o_proj": "attn_output",
  "mlp.gate_proj": "ffn_gate",
  "mlp.up_proj": "ffn_up",
  "mlp.down_proj": "ffn_down",
  "input_layernorm": "attn_norm",
  "post_attention_layernorm": "ffn_norm",
}


def tiny_tensors(config: dict = TINY_CONFIG, seed: int = 0) -> dict[str, np.ndarray]:
  """Random float32 tensors with every name and shape a llama checkpoint of this config holds."""
  rng = np.random.default_rng(seed)
  return {
    name: rng.standard_normal(shape).astype(np.float32) * (1.0 if len(shape) == 1 else 0.05)
    for name, shape in llama_tensor_shapes(config).items()
  }


def gguf_name(hf_name: str) -> str:
  stem = hf_name.removesuffix(".weight")
  if stem in _HF_TO_GGUF:
    return _HF_TO_GGUF[stem] + ".weight"
  _, _, i, rest = stem.split(".", 3)  # model.layers.<i>.<rest>
  return f"blk.{i}.{_HF_TO_GGUF[rest]}.weight"


def write_gguf(
  path: pathlib.Path,
  tensors: dict[str, np.ndarray],
  config: dict = TINY_CONFIG,
  qtype: QType = QType.F32,
  arch: str = "llama",
  extra_tensors: dict[str, np.ndarray] | None = None,
  metadata: dict | None = None,
) -> pathlib.Path:
  """Writes a llama GGUF as llama.cpp's converter would: q/k rows permuted, 2-D weights in qtype,
  norms in F32. metadata: extra {key: value} pairs, value types inferred by the writer."""
  w = gguf.GGUFWriter(path, arch)
  w.add_block_count(config["num_hidden_layers"])
  w.add_context_length(config["max_position_embeddings"])
  w.add_embedding_length(config["hidden_size"])
  w.add_feed_forward_length(config["intermediate_size"])
  w.add_head_count(config["num_attention_heads"])
  w.add_head_count_kv(config["num_key_value_heads"])
  w.add_layer_norm_rms_eps(config["rms_norm_eps"])
  w.add_rope_freq_base(config["rope_theta"])
  w.add_vocab_size(config["vocab_size"])
  w.add_bos_token_id(config["bos_token_id"])
  w.add_eos_token_id(config["eos_token_id"])
  for key, value in (metadata or {}).items():
    if isinstance(value, str):
      w.add_string(key, value)
    elif isinstance(value, float):
      w.add_float32(key, value)
    else:
      w.add_uint32(key, value)
  for name, x in tensors.items():
    if name.endswith("q_proj.weight"):
      x = permute_qk(x, config["num_attention_heads"])
    elif name.endswith("k_proj.weight"):
      x = permute_qk(x, config["num_key_value_heads"])
    _add(w, gguf_name(name), x, qtype if x.ndim == 2 else QType.F32)
  for name, x in (extra_tensors or {}).items():
    _add(w, name, x, QType.F32)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def _add(w: gguf.GGUFWriter, name: str, x: np.ndarray, qtype: QType) -> None:
  if qtype in (QType.F32, QType.F16):
    w.add_tensor(name, gguf.quants.quantize(x, qtype))
  else:
    w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)


def write_hf_dir(
  path: pathlib.Path, tensors: dict[str, np.ndarray], config: dict = TINY_CONFIG, shards: int = 1
) -> pathlib.Path:
  """Writes config.json and model.safetensors, or `shards` files plus model.safetensors.index.json."""
  from safetensors.numpy import save_file

  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(config))
  if shards == 1:
    save_file(tensors, path / "model.safetensors")
    return path
  names = list(tensors)
  weight_map = {}
  for s in range(shards):
    file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
    part = names[s::shards]
    save_file({n: tensors[n] for n in part}, path / file)
    weight_map |= {n: file for n in part}
  (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
  return path
