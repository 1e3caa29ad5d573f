"""Falcon decoder block: fused query_key_value, rotary, LayerNorm, GELU MLP, parallel attention.

Three fused q/k/v layouts (HF modeling_falcon `_split_heads`):
  falcon_mqa      (7B, multi_query):          [H q heads | 1 k | 1 v]
  falcon_mha      (multi_query=False):        per head [q, k, v]
  falcon_grouped  (40B/180B, new_decoder_architecture): per kv group [R q heads, k, v]
"""

from __future__ import annotations

import flax.linen as nn
import jax

from mixq_jax.config import ModelConfig
from mixq_jax.models import common


def split_fused_qkv(cfg: ModelConfig, fused):  # [B, T, (H + 2G) Dh] -> q [B,T,H,Dh], k, v [B,T,G,Dh]
  b, t, _ = fused.shape
  h, g, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  if cfg.qkv_layout == "falcon_mqa":
    x = fused.reshape(b, t, h + 2, dh)
    return x[:, :, :h], x[:, :, h:h + 1], x[:, :, h + 1:]
  if cfg.qkv_layout == "falcon_mha":
    x = fused.reshape(b, t, h, 3, dh)
    return x[:, :, :, 0], x[:, :, :, 1], x[:, :, :, 2]
  if cfg.qkv_layout == "falcon_grouped":
    x = fused.reshape(b, t, g, h // g + 2, dh)
    return x[:, :, :, :-2].reshape(b, t, h, dh), x[:, :, :, -2], x[:, :, :, -1]
  raise ValueError(f"qkv_layout={cfg.qkv_layout!r} is not a Falcon layout")


class FalconAttention(nn.Module):
  cfg: ModelConfig
  layer: int
  mk: common.Builder

  @nn.compact
  def __call__(self, x, ctx: common.Ctx, layer_cache):  # x [B, T, D]
    c, mk = self.cfg, self.mk
    b, t, d = x.shape
    valid = ctx.positions >= 0
    xa = mk.site("attn_in", "query_key_value")(x, valid, ctx.detect)
    fused = mk.dense("query_key_value", d, (c.num_heads + 2 * c.num_kv_heads) * c.head_dim, c.qkv_bias)(xa)
    q, k, v = split_fused_qkv(c, fused.reshape(b, t, -1))
    inv_freq = common.rope_inv_freq(c.rope, c.head_dim)
    q, k = common.apply_rope(q, ctx.positions, inv_freq), common.apply_rope(k, ctx.positions, inv_freq)
    out, new_cache = common.attend_with_cache(q, k, v, ctx.positions, layer_cache, ctx.cache_pos, ctx.start,
                                              c.window(self.layer))
    xo = mk.site("o_in", "dense")(out, valid, ctx.detect)
    return mk.dense("dense", d, d, c.o_bias)(xo).reshape(b, t, d), new_cache


class FalconMLP(nn.Module):
  cfg: ModelConfig
  mk: common.Builder

  @nn.compact
  def __call__(self, x, ctx: common.Ctx):
    c, mk = self.cfg, self.mk
    b, t, d = x.shape
    f = c.intermediate_size
    valid = ctx.positions >= 0
    h = mk.dense("dense_h_to_4h", d, f, c.mlp_bias)(mk.site("mlp_in", "dense_h_to_4h")(x, valid, ctx.detect))
    # HF Falcon's "gelu" is the exact erf GELU.
    h = jax.nn.gelu(h, approximate=False).reshape(b, t, f)
    return mk.dense("dense_4h_to_h", f, d, c.mlp_bias)(mk.site("down_in", "dense_4h_to_h")(h, valid, ctx.detect)
                                                       ).reshape(b, t, d)


class FalconBlock(nn.Module):
  cfg: ModelConfig
  layer: int
  mk: common.Builder

  @nn.compact
  def __call__(self, x, ctx: common.Ctx, layer_cache=None):
    c, mk = self.cfg, self.mk
    norm = lambda name: common.make_norm(c, mk.param_dtype, name)
    attn_mod = FalconAttention(c, self.layer, mk.child("self_attention"), name="self_attention")
    mlp = FalconMLP(c, mk.child("mlp"), name="mlp")
    if c.num_ln_in_parallel_attn == 2:
      h_attn, h_mlp = norm("ln_attn")(x), norm("ln_mlp")(x)
    else:
      h_attn = h_mlp = norm("input_layernorm")(x)
    attn, new_cache = attn_mod(h_attn, ctx, layer_cache)
    if c.parallel_attn:
      return x + attn + mlp(h_mlp, ctx), new_cache
    x = x + attn
    return x + mlp(norm("post_attention_layernorm")(x), ctx), new_cache


def hf_layer_names(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Expected HF tensors of one layer, relative to `transformer.h.{i}.`: name -> shape."""
  c = cfg
  d, f = c.hidden_size, c.intermediate_size
  qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
  names = {
      "self_attention.query_key_value.weight": (qkv, d), "self_attention.dense.weight": (d, d),
      "mlp.dense_h_to_4h.weight": (f, d), "mlp.dense_4h_to_h.weight": (d, f),
  }
  if c.qkv_bias:
    names |= {"self_attention.query_key_value.bias": (qkv,), "self_attention.dense.bias": (d,),
              "mlp.dense_h_to_4h.bias": (f,), "mlp.dense_4h_to_h.bias": (d,)}
  norms = ["ln_attn", "ln_mlp"] if c.num_ln_in_parallel_attn == 2 else ["input_layernorm"]
  if not c.parallel_attn:
    norms.append("post_attention_layernorm")
  for n in norms:
    names |= {f"{n}.weight": (d,), f"{n}.bias": (d,)}
  return names


HF_PREFIX = "transformer.h."
HF_TOP = {"embed": "transformer.word_embeddings.weight", "final_norm": "transformer.ln_f", "lm_head": "lm_head.weight"}
