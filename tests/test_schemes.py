"""Scheme registry, per-layer rules and plans."""

import pytest

from mixq_jax.schemes import LayerQuant, QuantPlan, Rule, build_plan, get_scheme, site_of

PATHS = [f"layers_{i}.{m}" for i in range(2) for m in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")] + ["lm_head"]


def test_default_plan_keeps_head_bf16():
  plan = build_plan(PATHS, "mix8", capacity=64)
  assert plan.get("layers_1.mlp.down_proj") == LayerQuant(scheme="mix8", capacity=64, threshold=6.0)
  assert plan.get("lm_head").scheme == "bf16"
  assert build_plan(PATHS, "w8a16", quantize_head=True).get("lm_head").scheme == "w8a16"
  assert QuantPlan.from_dict(plan.to_dict()) == plan


def test_rules_apply_in_order():
  plan = build_plan(PATHS, "w8a8", [Rule.parse("down_proj=w8a16"), Rule.parse(r"layers_0\.mlp\.down=bf16"),
                                    Rule.parse("lm_head=mix8:capacity=16,threshold=4")])
  assert plan.get("layers_1.mlp.down_proj").scheme == "w8a16"
  assert plan.get("layers_0.mlp.down_proj").scheme == "bf16"
  assert plan.get("lm_head") == LayerQuant(scheme="mix8", capacity=16, threshold=4.0)
  assert plan.get("layers_0.self_attn.q_proj") == LayerQuant(scheme="w8a8", smooth=True)


@pytest.mark.parametrize("rules, match", [
    (["nothing_like_this=w8a8"], "matches no layer"),
    (["q_proj=w8a16"], "same activation"),
    (["down_proj=w9a9"], "unknown scheme"),
    (["down_proj"], "PATTERN=SCHEME"),
    (["(=w8a8"], "regular expression"),
    (["down_proj=mix8:size=3"], "unknown option"),
])
def test_bad_rules(rules, match):
  with pytest.raises(ValueError, match=match):
    build_plan(PATHS, "w8a8", [Rule.parse(r) for r in rules])


def test_registry_and_sites():
  with pytest.raises(ValueError, match="unknown scheme 'int3'"):
    get_scheme("int3")
  with pytest.raises(ValueError, match="capacity"):
    LayerQuant(scheme="mix8", capacity=0)
  assert site_of("layers_2.self_attn.k_proj") == "layers_2.self_attn.attn_in"
  assert site_of("layers_2.self_attention.dense") == "layers_2.self_attention.o_in"
  assert site_of("lm_head") == "head_in"


@pytest.mark.parametrize("scheme", ["w8a16", "mix8"])
def test_quantized_head_reaches_the_model(scheme):
  """quantize_head / a rule on "lm_head" quantizes the top-level head (its plan path has no prefix)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from mixq_jax.config import ModelConfig
  from mixq_jax.models import Transformer, init_variables, layer_paths

  cfg = ModelConfig(model_type="llama", family="llama", vocab_size=96, hidden_size=64, intermediate_size=128,
                    num_layers=1, num_heads=4, num_kv_heads=4, head_dim=16, max_position_embeddings=64,
                    tie_word_embeddings=False)
  plan = build_plan(layer_paths(cfg), scheme, capacity=8, quantize_head=True)
  v = init_variables(cfg, jax.random.PRNGKey(0), jnp.float32, plan)
  assert v["params"]["lm_head"]["w_q"].dtype == jnp.int8 and "weight" not in v["params"]["lm_head"]
  assert ("head_in" in v.get("outliers", {})) == (scheme == "mix8")
  toks = jnp.arange(6, dtype=jnp.int32)[None]
  (logits, _), _ = Transformer(cfg, jnp.float32, plan=plan).apply(v, toks, toks, mutable=["outliers"])
  assert logits.shape == (1, 6, 96) and np.isfinite(np.asarray(logits)).all()
