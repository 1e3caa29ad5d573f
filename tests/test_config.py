"""ModelConfig.from_hf: supported fields map correctly; unsupported ones raise naming the field."""

import json

import pytest

from mixq_jax.config import ConfigError, ModelConfig

LLAMA = {"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 96,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 500000.0}
LLAMA3_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}


def test_llama31_rope_scaling_both_spellings():
  old = ModelConfig.from_hf(LLAMA | {"rope_scaling": {"rope_type": "llama3"} | LLAMA3_SCALING})
  older = ModelConfig.from_hf(LLAMA | {"rope_scaling": {"type": "llama3"} | LLAMA3_SCALING})
  new = ModelConfig.from_hf({k: v for k, v in LLAMA.items() if k != "rope_theta"}
                            | {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0} | LLAMA3_SCALING})
  assert old.rope == new.rope == older.rope
  assert new.rope.type == "llama3" and new.rope.theta == 500000.0 and new.rope.factor == 8.0
  assert new.num_kv_heads == 2 and new.head_dim == 16


def test_roundtrip_dict_and_file(tmp_path):
  cfg = ModelConfig.from_hf({**LLAMA, "model_type": "mistral", "sliding_window": 32})
  assert cfg.sliding_windows == (32, 32)
  assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
  (tmp_path / "config.json").write_text(json.dumps(LLAMA))
  assert ModelConfig.from_hf_file(tmp_path).hidden_size == 64


def test_qwen2_defaults():
  cfg = ModelConfig.from_hf({**LLAMA, "model_type": "qwen2", "tie_word_embeddings": True,
                             "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1})
  assert cfg.qkv_bias and not cfg.o_bias and cfg.tie_word_embeddings
  assert cfg.sliding_windows == (None, 8)


def test_falcon_layouts():
  base = {"model_type": "falcon", "vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4}
  assert ModelConfig.from_hf(base).qkv_layout == "falcon_mqa"
  assert ModelConfig.from_hf(base).num_kv_heads == 1
  c = ModelConfig.from_hf(base | {"new_decoder_architecture": True, "num_kv_heads": 2})
  assert (c.qkv_layout, c.num_kv_heads, c.num_ln_in_parallel_attn, c.parallel_attn) == ("falcon_grouped", 2, 2, True)
  c = ModelConfig.from_hf(base | {"multi_query": False, "parallel_attn": False})
  assert (c.qkv_layout, c.num_kv_heads, c.parallel_attn) == ("falcon_mha", 4, False)


@pytest.mark.parametrize("hf, field", [
    ({**LLAMA, "model_type": "gpt2"}, "model_type"),
    ({"model_type": "falcon", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
      "num_attention_heads": 2, "alibi": True}, "alibi"),
    ({**LLAMA, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type"),
    ({**LLAMA, "rope_parameters": {"rope_type": "dynamic", "factor": 4.0}}, "rope_parameters"),
    ({**LLAMA, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
    ({**LLAMA, "hidden_act": "gelu"}, "hidden_act"),
    ({**LLAMA, "num_key_value_heads": 3}, "num_key_value_heads"),
])
def test_unsupported_fields_named(hf, field):
  with pytest.raises(ConfigError, match=field):
    ModelConfig.from_hf(hf)


def test_missing_config_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="config"):
    ModelConfig.from_hf_file(tmp_path)
