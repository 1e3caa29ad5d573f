"""Logit parity with transformers (PyTorch, fp32) on randomly initialised tiny configs."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from mixq_jax.config import ModelConfig  # noqa: E402
from mixq_jax.models import Transformer, init_cache, params_from_hf  # noqa: E402

SMALL = dict(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
LLAMA = dict(SMALL, intermediate_size=96)

VARIANTS = {
    "llama2_mha": ("LlamaConfig", "LlamaForCausalLM", dict(LLAMA)),
    "llama3_gqa_rope_scaling": ("LlamaConfig", "LlamaForCausalLM", dict(
        LLAMA, num_key_value_heads=2, max_position_embeddings=64,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "llama_tied_bias_headdim": ("LlamaConfig", "LlamaForCausalLM", dict(
        LLAMA, num_key_value_heads=1, tie_word_embeddings=True, attention_bias=True, mlp_bias=True, head_dim=32)),
    "llama_linear_rope": ("LlamaConfig", "LlamaForCausalLM", dict(
        LLAMA, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})),
    "mistral_sliding_window": ("MistralConfig", "MistralForCausalLM", dict(
        LLAMA, num_key_value_heads=2, sliding_window=5)),
    "qwen2_bias_tied_window": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        LLAMA, num_key_value_heads=2, tie_word_embeddings=True, use_sliding_window=True, sliding_window=4,
        max_window_layers=1)),
    "falcon7b_mqa_parallel": ("FalconConfig", "FalconForCausalLM", dict(SMALL)),
    "falcon_mha_sequential_bias": ("FalconConfig", "FalconForCausalLM", dict(
        SMALL, multi_query=False, parallel_attn=False, bias=True)),
    "falcon40b_grouped_2ln": ("FalconConfig", "FalconForCausalLM", dict(
        SMALL, new_decoder_architecture=True, num_kv_heads=2)),
    "falcon180b_grouped_1ln": ("FalconConfig", "FalconForCausalLM", dict(
        SMALL, new_decoder_architecture=True, num_kv_heads=2, num_ln_in_parallel_attn=1, ffn_hidden_size=96)),
}


def _hf_model(name):
  cfg_cls, model_cls, kw = VARIANTS[name]
  torch.manual_seed(hash(name) % 2**31)
  hf_cfg = getattr(transformers, cfg_cls)(**kw)
  model = getattr(transformers, model_cls)(hf_cfg).eval().float()
  with torch.no_grad():
    for p in model.parameters():  # HF inits norms to ones and biases to zeros; randomise all
      p.normal_(0.0, 0.1)
  return hf_cfg, model


def _ours(hf_cfg, model):
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  cfg = ModelConfig.from_hf(hf_cfg.to_dict())
  return cfg, params_from_hf(cfg, sd, jnp.float32)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_logits_match_transformers(name):
  hf_cfg, model = _hf_model(name)
  cfg, params = _ours(hf_cfg, model)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, (2, 13))
  with torch.no_grad():
    ref = model(torch.tensor(tokens)).logits.numpy()
  positions = np.broadcast_to(np.arange(13), tokens.shape)
  out, _ = Transformer(cfg, jnp.float32).apply({"params": params}, jnp.asarray(tokens), jnp.asarray(positions))
  err = np.abs(np.asarray(out) - ref).max() / np.abs(ref).max()
  assert err < 1e-4, f"{name}: max abs err / max abs logit = {err:.2e}"


@pytest.mark.parametrize("name", ["llama3_gqa_rope_scaling", "mistral_sliding_window", "falcon40b_grouped_2ln"])
def test_cache_and_padding_match_full_forward(name):
  """Left-padded prefill + one-token decode steps give the same logits as one unpadded forward."""
  hf_cfg, model = _hf_model(name)
  cfg, params = _ours(hf_cfg, model)
  m = Transformer(cfg, jnp.float32)
  rng = np.random.default_rng(1)
  lens, n_new = [9, 6], 4
  seqs = [rng.integers(0, cfg.vocab_size, n + n_new) for n in lens]
  p = max(lens)
  tokens = np.zeros((2, p), np.int32)
  pos = np.full((2, p), -1, np.int32)
  for r, n in enumerate(lens):
    tokens[r, p - n:], pos[r, p - n:] = seqs[r][:n], np.arange(n)
  cache = init_cache(cfg, 2, p + n_new, jnp.float32)
  logits, cache = m.apply({"params": params}, jnp.asarray(tokens), jnp.asarray(pos), cache, 0)
  got = [np.asarray(logits[:, -1])]
  for i in range(n_new - 1):
    tok = np.array([seqs[r][lens[r] + i] for r in range(2)], np.int32)[:, None]
    step_pos = np.array([lens[r] + i for r in range(2)], np.int32)[:, None]
    logits, cache = m.apply({"params": params}, jnp.asarray(tok), jnp.asarray(step_pos), cache, p + i)
    got.append(np.asarray(logits[:, 0]))
  for r, n in enumerate(lens):
    full = seqs[r][None, : n + n_new - 1]
    ref, _ = m.apply({"params": params}, jnp.asarray(full), jnp.arange(full.shape[1])[None])
    want = np.asarray(ref[0, n - 1:])
    np.testing.assert_allclose(np.stack([g[r] for g in got]), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
