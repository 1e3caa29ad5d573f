"""Sampling filters and the generate loop (EOS stop, batching, seeds) on a tiny random model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixq_jax.config import ModelConfig
from mixq_jax.generate import SamplingConfig, generate, sample
from mixq_jax.models import Transformer, init_params
from mixq_jax.runtime import LoadedModel

CFG = ModelConfig(model_type="llama", family="llama", vocab_size=64, hidden_size=32, intermediate_size=48,
                  num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=128,
                  eos_token_ids=(3,))


class _Tok:
  """Identity 'tokenizer': a prompt string is a space-separated list of ids."""

  def __call__(self, text):
    return {"input_ids": [int(t) for t in text.split()]}

  def decode(self, ids, skip_special_tokens=True):
    return " ".join(map(str, ids))


@pytest.fixture(scope="module")
def lm():
  params = init_params(CFG, jax.random.PRNGKey(0), jnp.float32)
  # Larger weights make the random model's next-token distribution peaked and non-trivial.
  params = jax.tree.map(lambda a: a * 8.0 if a.ndim == 2 else a, params)
  return LoadedModel(CFG, {"params": params}, _Tok(), jnp.float32, Transformer(CFG, jnp.float32))


def test_sample_filters():
  key = jax.random.PRNGKey(1)
  logits = jax.random.normal(key, (4, 50)) * 3
  greedy = jnp.argmax(logits, -1)
  assert (sample(logits, key, SamplingConfig()) == greedy).all()
  assert (sample(logits, key, SamplingConfig(temperature=1.0, top_k=1)) == greedy).all()
  assert (sample(logits, key, SamplingConfig(temperature=1.0, top_p=1e-6)) == greedy).all()
  # top-k=5: every draw is among the 5 best
  top5 = jax.lax.top_k(logits, 5)[1]
  for s in range(20):
    tok = sample(logits, jax.random.PRNGKey(s), SamplingConfig(temperature=2.0, top_k=5))
    assert all(int(tok[b]) in set(np.asarray(top5[b]).tolist()) for b in range(4))
  # top-p: draws stay in the smallest set reaching mass p
  probs = np.asarray(jax.nn.softmax(logits, -1))
  for s in range(20):
    tok = np.asarray(sample(logits, jax.random.PRNGKey(s), SamplingConfig(temperature=1.0, top_p=0.5)))
    for b in range(4):
      order = np.argsort(-probs[b])
      n_keep = int(np.searchsorted(np.cumsum(probs[b][order]), 0.5) + 1)
      assert tok[b] in order[:n_keep]


@pytest.mark.parametrize("kw", [dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_sampling_config(kw):
  with pytest.raises(ValueError):
    SamplingConfig(**kw)


def test_batched_generation_equals_single(lm):
  prompts = ["5 9 12 7 30 2", "40 41", "17 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23"]
  batched = generate(lm, prompts, max_new_tokens=12, stop_on_eos=False)
  for p, got in zip(prompts, batched.token_ids):
    assert generate(lm, [p], max_new_tokens=12, stop_on_eos=False).token_ids[0] == got
  assert all(len(t) == 12 for t in batched.token_ids)


def test_stops_on_eos(lm):
  free = generate(lm, ["5 9 12"], max_new_tokens=40, stop_on_eos=False).token_ids[0]
  eos = free[len(free) // 2]  # pretend a token the model emits is the EOS
  lm2 = dataclasses.replace(lm, config=dataclasses.replace(CFG, eos_token_ids=(eos,)))
  stopped = generate(lm2, ["5 9 12"], max_new_tokens=40).token_ids[0]
  cut = free.index(eos) + 1
  assert stopped == free[:cut]


def test_sampling_seeded(lm):
  sc = SamplingConfig(temperature=1.0, top_k=20)
  a = generate(lm, ["1 2 3"], max_new_tokens=16, sampling=sc, seed=7, stop_on_eos=False).token_ids
  b = generate(lm, ["1 2 3"], max_new_tokens=16, sampling=sc, seed=7, stop_on_eos=False).token_ids
  c = generate(lm, ["1 2 3"], max_new_tokens=16, sampling=sc, seed=8, stop_on_eos=False).token_ids
  assert a == b and a != c


def test_bad_arguments(lm):
  with pytest.raises(ValueError, match="max_new_tokens"):
    generate(lm, ["1"], max_new_tokens=0)
  with pytest.raises(ValueError, match="zero tokens"):
    generate(lm, [""], max_new_tokens=2)
