"""The decoder: embedding -> N family blocks -> final norm -> LM head, plus HF weight mapping.

Shape letters: B batch, T tokens in this call, S cache slots, D hidden, V vocab.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mixq_jax.config import ModelConfig
from mixq_jax.models import common, falcon, llama
from mixq_jax.schemes import QuantPlan

_FAMILIES = {"llama": llama, "falcon": falcon}
# Float32 logits one NLL block may hold (Transformer targets=...): at batch 512 x 512 tokens x 32000
# the whole [B, T, V] would take 33.5 GB, and as much again for the log-softmax.
NLL_BLOCK_BYTES = 4 << 30
_BLOCKS = {"llama": llama.LlamaBlock, "falcon": falcon.FalconBlock}


class Transformer(nn.Module):
  """Causal LM. __call__(tokens [B, T], positions [B, T], cache=None, start=0, last_only=False)
  returns (logits [B, T or 1, V] float32, new cache or None).

  positions: index of each token in its own sequence, -1 for padding. With a cache, the T new
  tokens are written at cache slots [start, start + T) and attend to every earlier slot.
  targets [B, T] int32: return the per-token NLL [B, T] float32 of these ids instead of the logits,
  computed a block of rows at a time (NLL_BLOCK_BYTES of float32 logits at most), so a large
  perplexity batch never holds all of its [B, T, V] logits at once.
  """

  cfg: ModelConfig
  param_dtype: Any = jnp.bfloat16
  impl: str = "xla"  # xla | pallas | interpret: how quantized layers run (layers.qmatmul)
  plan: QuantPlan = QuantPlan()  # per-layer quantization; empty = all bf16
  calibrate: bool = False  # sow per-site activation statistics into the "calib" collection
  mesh: Any = None  # jax.sharding.Mesh with axis "tp" for tensor parallelism (see mixq_jax.sharding)

  @nn.compact
  def __call__(self, tokens, positions, cache: common.Cache | None = None, start=0, last_only: bool = False,
               detect: bool = False, targets=None):
    c = self.cfg
    mk = common.Builder(self.plan, "", self.param_dtype, self.impl, self.calibrate, self.mesh, detect)
    embed = self.param("embed", nn.initializers.normal(0.02), (c.vocab_size, c.hidden_size), self.param_dtype)
    x = self._replicated(jnp.take(embed, tokens, axis=0))  # [B, T, D]
    cache_pos = None if cache is None else common.update_cache_pos(cache, positions, start)
    ctx = common.Ctx(positions, cache_pos, start, detect)
    new_layers = []
    block_cls = _BLOCKS[c.family]
    for i in range(c.num_layers):
      layer_cache = None if cache is None else cache["layers"][i]
      x, lc = block_cls(c, i, mk.child(f"layers_{i}"), name=f"layers_{i}")(x, ctx, layer_cache)
      # Megatron: the residual stream is replicated, so each block ends in one all-reduce per branch.
      x = self._replicated(x)
      new_layers.append(lc)
    x = common.make_norm(c, self.param_dtype, "final_norm")(x)
    if last_only:
      x, positions = x[:, -1:], positions[:, -1:]
    new_cache = None if cache is None else {"pos": cache_pos, "layers": new_layers}
    if c.tie_word_embeddings:
      head = lambda h, p: jnp.einsum("btd,vd->btv", h, embed.astype(h.dtype),  # noqa: E731
                                     preferred_element_type=jnp.float32)
    else:
      site, dense = mk.site("head_in", "lm_head"), mk.dense("lm_head", c.hidden_size, c.vocab_size, False)
      head = lambda h, p: dense(site(h, p >= 0, detect)).reshape(*h.shape[:2], c.vocab_size)  # noqa: E731
    if targets is None:
      return head(x, positions).astype(jnp.float32), new_cache
    b, t = targets.shape
    rows = max(1, min(b, NLL_BLOCK_BYTES // (t * c.vocab_size * 4)))
    nll = []
    for r in range(0, b, rows):  # static blocks: XLA frees each block's logits before the next
      logp = jax.nn.log_softmax(head(x[r:r + rows], positions[r:r + rows]).astype(jnp.float32), axis=-1)
      nll.append(-jnp.take_along_axis(logp, targets[r:r + rows, :, None], axis=-1)[..., 0])
    return jnp.concatenate(nll, axis=0), new_cache


  def _replicated(self, x):
    if self.mesh is None:
      return x
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec()))


def layer_paths(cfg: ModelConfig) -> list[str]:
  """Paths of every Dense layer ("layers_0.self_attn.q_proj", ..., "lm_head"), as plans name them."""
  out = []
  for i in range(cfg.num_layers):
    for rel, shape in _FAMILIES[cfg.family].hf_layer_names(cfg).items():
      if rel.endswith(".weight") and len(shape) == 2:
        out.append(f"layers_{i}.{rel[:-len('.weight')]}")
  if not cfg.tie_word_embeddings:
    out.append("lm_head")
  return out


def expected_hf_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Every HF tensor name the model needs, with its shape."""
  fam = _FAMILIES[cfg.family]
  out: dict[str, tuple[int, ...]] = {fam.HF_TOP["embed"]: (cfg.vocab_size, cfg.hidden_size)}
  layer = fam.hf_layer_names(cfg)
  for i in range(cfg.num_layers):
    out |= {f"{fam.HF_PREFIX}{i}.{k}": v for k, v in layer.items()}
  for suffix in ("weight", "bias") if cfg.norm == "layer" else ("weight",):
    out[_final_norm_name(cfg, suffix)] = (cfg.hidden_size,)
  if not cfg.tie_word_embeddings:
    out[fam.HF_TOP["lm_head"]] = (cfg.vocab_size, cfg.hidden_size)
  return out


def _final_norm_name(cfg: ModelConfig, suffix: str) -> str:
  base = _FAMILIES[cfg.family].HF_TOP["final_norm"]
  return base if base.endswith(suffix) else f"{base.rsplit('.weight', 1)[0]}.{suffix}"


def check_hf_tensors(cfg: ModelConfig, tensors: dict[str, Any]) -> None:
  """Raises ValueError naming every missing, unexpected or mis-shaped tensor."""
  expected = expected_hf_tensors(cfg)
  # Tied checkpoints sometimes still carry a copy of the head; it is redundant, not an error.
  ignorable = {_FAMILIES[cfg.family].HF_TOP["lm_head"]} if cfg.tie_word_embeddings else set()
  missing = sorted(set(expected) - set(tensors))
  extra = sorted(set(tensors) - set(expected) - ignorable)
  bad = [f"{k}: expected {expected[k]}, got {tuple(tensors[k].shape)}"
         for k in sorted(set(expected) & set(tensors)) if tuple(tensors[k].shape) != expected[k]]
  problems = []
  if missing:
    problems.append(f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''} ({len(missing)} in all)")
  if extra:
    problems.append(f"unexpected tensors {extra[:8]}{' ...' if len(extra) > 8 else ''} ({len(extra)} in all)")
  if bad:
    problems.append("mis-shaped tensors " + "; ".join(bad[:8]))
  if problems:
    raise ValueError(f"weights do not match the {cfg.model_type} config: " + " | ".join(problems))


def params_from_hf(cfg: ModelConfig, tensors: dict[str, np.ndarray], dtype=jnp.bfloat16) -> dict[str, Any]:
  """Maps HF-named tensors (HF layouts) to the Flax parameter tree, checking names and shapes."""
  check_hf_tensors(cfg, tensors)
  fam = _FAMILIES[cfg.family]
  cast = lambda a: jnp.asarray(np.asarray(a, np.float32), dtype)
  params: dict[str, Any] = {"embed": cast(tensors[fam.HF_TOP["embed"]])}
  layer_names = fam.hf_layer_names(cfg)
  for i in range(cfg.num_layers):
    layer: dict[str, Any] = {}
    for rel in layer_names:
      *path, leaf = rel.split(".")
      node = layer
      for p in path:
        node = node.setdefault(p, {})
      node[leaf] = cast(tensors[f"{fam.HF_PREFIX}{i}.{rel}"])
    params[f"layers_{i}"] = layer
  params["final_norm"] = {s: cast(tensors[_final_norm_name(cfg, s)])
                          for s in (("weight", "bias") if cfg.norm == "layer" else ("weight",))}
  if not cfg.tie_word_embeddings:
    params["lm_head"] = {"weight": cast(tensors[fam.HF_TOP["lm_head"]])}
  return params


def init_variables(cfg: ModelConfig, rng: jax.Array, dtype=jnp.bfloat16, plan: QuantPlan = QuantPlan()) -> dict:
  """Random variables {"params", ("outliers")} for a plan, built directly in their stored form
  (int8 weights, scales, outlier buffers) without a float copy: tests and benchmarks."""
  model = Transformer(cfg, dtype, plan=plan)
  tokens = jnp.zeros((1, 1), jnp.int32)
  return jax.jit(model.init)(rng, tokens, tokens)


def init_params(cfg: ModelConfig, rng: jax.Array, dtype=jnp.bfloat16) -> dict[str, Any]:
  """Random bf16/fp32 parameters; layout identical to params_from_hf."""
  return init_variables(cfg, rng, dtype)["params"]
