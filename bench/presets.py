"""Model presets by architecture shape, for benchmarks with random weights (no download).

Each preset is the real HF `config.json` of the model (the fields that set shapes and numerics), so
it goes through `ModelConfig.from_hf` like a downloaded model would, and the torch peer in
bench/throughput.py builds the same architecture from the same dict. `tiny` is for CPU smoke tests.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from mixq_jax.config import ModelConfig

_LLAMA2 = {"model_type": "llama", "vocab_size": 32000, "hidden_act": "silu", "max_position_embeddings": 4096,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": 1,
           "eos_token_id": 2}

PRESETS: dict[str, dict[str, Any]] = {
    "llama-2-7b": {**_LLAMA2, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32},
    "llama-2-13b": {**_LLAMA2, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                    "num_attention_heads": 40, "num_key_value_heads": 40},
    "llama-2-70b": {**_LLAMA2, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                    "num_attention_heads": 64, "num_key_value_heads": 8},
    "llama-3-8b": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
                   "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                   "hidden_act": "silu", "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
                   "rope_theta": 500000.0, "tie_word_embeddings": False, "bos_token_id": 128000,
                   "eos_token_id": 128001},
    "mistral-7b": {"model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                   "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                   "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
                   "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False,
                   "bos_token_id": 1, "eos_token_id": 2},  # Mistral-7B-v0.1
    "qwen2-7b": {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
                 "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                 "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
                 "rope_theta": 1000000.0, "use_sliding_window": False, "sliding_window": 131072,
                 "max_window_layers": 28, "tie_word_embeddings": False, "bos_token_id": 151643,
                 "eos_token_id": 151643},
    "falcon-7b": {"model_type": "falcon", "vocab_size": 65024, "hidden_size": 4544, "num_hidden_layers": 32,
                  "num_attention_heads": 71, "multi_query": True, "parallel_attn": True, "bias": False,
                  "alibi": False, "new_decoder_architecture": False, "layer_norm_epsilon": 1e-5,
                  "max_position_embeddings": 2048, "bos_token_id": 11, "eos_token_id": 11},
    # CPU smoke tests: every kernel shape a multiple of 16, GQA on.
    "tiny": {"model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
             "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
             "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2},
}


def hf_config(name: str) -> dict[str, Any]:
  """The HF config dict of a preset."""
  try:
    return dict(PRESETS[name])
  except KeyError:
    raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}") from None


def is_preset(name: str) -> bool:
  return name in PRESETS


def model_config(name: str) -> ModelConfig:
  """ModelConfig of a preset, or of a local HF directory / config.json (shapes only, no weights)."""
  if is_preset(name):
    return ModelConfig.from_hf(hf_config(name))
  p = pathlib.Path(name)
  if p.is_dir() and (p / "config.json").exists():
    return ModelConfig.from_hf(json.loads((p / "config.json").read_text()))
  if p.suffix == ".json" and p.exists():
    return ModelConfig.from_hf(json.loads(p.read_text()))
  raise ValueError(f"{name!r} is neither a preset ({', '.join(PRESETS)}) nor a HF directory / config.json")


def param_count(cfg: ModelConfig) -> int:
  """Parameters of the architecture (embedding and head included)."""
  from mixq_jax.models.transformer import expected_hf_tensors

  total = 0
  for shape in expected_hf_tensors(cfg).values():
    n = 1
    for s in shape:
      n *= s
    total += n
  return total
