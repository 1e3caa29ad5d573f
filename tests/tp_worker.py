"""Run by tests/test_sharding.py in a subprocess with 8 host CPU devices: sharded vs unsharded logits,
for the XLA path (SPMD partitioner) and for the Pallas kernels in interpret mode (shard_map)."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mixq_jax import layers, sharding  # noqa: E402
from mixq_jax.config import ModelConfig  # noqa: E402
from mixq_jax.generate import generate  # noqa: E402
from mixq_jax.models import Transformer, init_variables, layer_paths  # noqa: E402
from mixq_jax.runtime import LoadedModel  # noqa: E402
from mixq_jax.schemes import build_plan  # noqa: E402

CFGS = {
    "llama_gqa": ModelConfig(model_type="llama", family="llama", vocab_size=96, hidden_size=64, intermediate_size=128,
                             num_layers=1, num_heads=8, num_kv_heads=4, head_dim=8, max_position_embeddings=64,
                             tie_word_embeddings=False, qkv_bias=True, eos_token_ids=(3,)),
    "falcon_mqa": ModelConfig.from_hf({"model_type": "falcon", "vocab_size": 96, "hidden_size": 64,
                                       "num_hidden_layers": 1, "num_attention_heads": 8, "bias": True}),
}


# Generation (prefill + decode loop with the sharded KV cache and outlier state) at one tp each.
GEN_CHECKS = {("llama_gqa", "mix8", "xla"): 2, ("falcon_mqa", "bf16", "xla"): 4, ("llama_gqa", "w8a8", "xla"): 8,
              ("llama_gqa", "mix8", "interpret"): 8}
KERNEL_SCHEMES = ["w8a16", "w8a8", "llm_int8", "mix8"]  # also run on the Pallas kernels (interpret mode)
KERNEL_TPS = (2, 8)


class Tok:
  def __call__(self, text):
    return {"input_ids": [int(t) for t in text.split()]}

  def decode(self, ids, skip_special_tokens=True):
    return " ".join(map(str, ids))


def local_shapes():
  """What one kernel call sees per device under shard_map (tp 4): column layers their N shard, row
  layers their K shard (and a psum), with outputs split / replicated accordingly."""
  mesh = sharding.make_mesh(4)
  seen = {}
  orig = layers._local_qmatmul

  def spy(qa, params, lq, impl, out_dtype=None, outlier_count=None):
    seen.setdefault(role, {"w_q": list(params["w_q"].shape), "x_q": list(qa.x_q.shape)})  # the sharded call comes first
    return orig(qa, params, lq, impl, out_dtype, outlier_count)

  layers._local_qmatmul = spy
  out = {}
  try:
    rng = np.random.default_rng(3)
    lq = layers.LayerQuant(scheme="mix8", capacity=8)
    x = jnp.asarray(rng.normal(size=(1, 5, 128)), jnp.bfloat16)
    for role, name in (("column", "q_proj"), ("row", "o_proj")):
      dense = layers.QuantDense(128, 64, True, jnp.bfloat16, "interpret", lq, mesh, name=name)
      site = layers.ActQuant(lq, "interpret", mesh=mesh)
      ref_dense, ref_site = dense.clone(impl="xla", mesh=None), site.clone(impl="xla", mesh=None)
      valid = jnp.ones((1, 5), bool)
      sv = site.init(jax.random.PRNGKey(0), x, valid)
      qa = site.apply(sv, x, valid, detect=True, mutable=["outliers"])[0]
      dv = dense.init(jax.random.PRNGKey(1), qa)
      dv = {"params": dict(dv["params"], bias=jnp.asarray(rng.normal(size=64), jnp.bfloat16))}
      specs = sharding.variable_specs({"params": {"x": {name: dv["params"]}}}, 4)["params"]["x"][name]
      sdv = {"params": {k: jax.device_put(a, jax.sharding.NamedSharding(mesh, specs[k]))
                        for k, a in dv["params"].items()}}
      y = jax.jit(lambda v, qa: dense.apply(v, qa))(sdv, qa)
      qa_ref = ref_site.apply(sv, x, valid, detect=True, mutable=["outliers"])[0]
      y_ref = ref_dense.apply(dv, qa_ref)
      out[role] = dict(seen[role], out_spec=str(y.sharding.spec),
                       rel_err=float(jnp.abs(y.astype(jnp.float32) - y_ref.astype(jnp.float32)).max()
                                     / jnp.abs(y_ref.astype(jnp.float32)).max()))
  finally:
    layers._local_qmatmul = orig
  return out


def main():
  assert len(jax.devices()) == 8, jax.devices()
  results = []
  rng = np.random.default_rng(0)
  for name, cfg in CFGS.items():
    for scheme in ["bf16", "w8a16", "w8a8", "llm_int8", "mix8"]:
      plan = build_plan(layer_paths(cfg), scheme, capacity=8, quantize_head=True)
      v = init_variables(cfg, jax.random.PRNGKey(1), jnp.float32, plan)
      v = jax.tree.map(np.asarray, v)
      if "outliers" in v:  # a realistic calibration set: 3 distinct columns per site
        for site in jax.tree_util.tree_leaves(v["outliers"], is_leaf=lambda d: isinstance(d, dict) and "idx" in d):
          site["idx"] = np.array([5, 1, 9] + [0] * 5, np.int32)
          site["count"] = np.array(3, np.int32)
          site["calib_count"] = np.array(3, np.int32)
      toks = rng.integers(0, cfg.vocab_size, (2, 11))
      pos = np.broadcast_to(np.arange(11), toks.shape)
      base = Transformer(cfg, jnp.float32, "xla", plan)
      ref = np.asarray(jax.jit(lambda v, t, p: base.apply(v, t, p, detect=True, mutable=["outliers"])[0][0])(v, toks, pos)
                       if "outliers" in v else base.apply(v, toks, pos)[0])
      ref_gen = None
      runs = [("xla", tp) for tp in (2, 4, 8)]
      if scheme in KERNEL_SCHEMES:
        runs += [("interpret", tp) for tp in KERNEL_TPS]
      for impl, tp in runs:
        check_gen = GEN_CHECKS.get((name, scheme, impl)) == tp
        if check_gen and ref_gen is None:
          ref_gen = generate(LoadedModel(cfg, v, Tok(), jnp.float32, base), ["5 6 7", "1 2"], max_new_tokens=6,
                             stop_on_eos=False).token_ids
        mesh = sharding.make_mesh(tp)
        sv = sharding.shard_variables(v, mesh)
        m = base.clone(mesh=mesh, impl=impl)
        apply = (lambda v, t, p: m.apply(v, t, p, detect=True, mutable=["outliers"])[0][0]) if "outliers" in v else (
            lambda v, t, p: m.apply(v, t, p)[0])
        out = np.asarray(jax.jit(apply)(sv, toks, pos))
        jaxpr = str(jax.make_jaxpr(apply)(sv, toks, pos))
        n_sharded = sum(not s.is_fully_replicated for s in jax.tree.leaves(jax.tree.map(lambda a: a.sharding, sv)))
        gen_equal = None
        if check_gen:
          # As runtime.load hands it out: with mix8's outlier-column cache, sharded like the weights
          # (the reference above ran without one).
          gv = sharding.shard_variables(layers.with_outlier_cache(v, plan), mesh)
          gen = generate(LoadedModel(cfg, gv, Tok(), jnp.float32, m), ["5 6 7", "1 2"], max_new_tokens=6,
                         stop_on_eos=False).token_ids
          gen_equal = gen == ref_gen
        results.append({"model": name, "scheme": scheme, "impl": impl, "tp": tp, "n_sharded_leaves": n_sharded,
                        "rel_err": float(np.abs(out - ref).max() / np.abs(ref).max()), "gen_equal": gen_equal,
                        "pallas_calls": jaxpr.count("pallas_call"), "shard_maps": jaxpr.count("shard_map"),
                        "psums": jaxpr.count("psum")})
  json.dump({"models": results, "local_shapes": local_shapes()}, sys.stdout)


if __name__ == "__main__":
  main()
