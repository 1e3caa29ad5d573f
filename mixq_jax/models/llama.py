"""Llama-family decoder block (Llama 2/3, Mistral, Qwen2): pre-norm attention + SwiGLU MLP.

HF tensor names, relative to `model.layers.{i}.`, are the Flax parameter paths inside the block.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from mixq_jax.config import ModelConfig
from mixq_jax.models import common


class LlamaAttention(nn.Module):
  cfg: ModelConfig
  layer: int
  mk: common.Builder

  @nn.compact
  def __call__(self, x, ctx: common.Ctx, layer_cache):  # x [B, T, D]
    c, mk = self.cfg, self.mk
    b, t, d = x.shape
    valid = ctx.positions >= 0
    xa = mk.site("attn_in", "q_proj")(x, valid, ctx.detect)
    q = mk.dense("q_proj", d, c.num_heads * c.head_dim, c.qkv_bias)(xa).reshape(b, t, c.num_heads, c.head_dim)
    k = mk.dense("k_proj", d, c.num_kv_heads * c.head_dim, c.qkv_bias)(xa).reshape(b, t, c.num_kv_heads, c.head_dim)
    v = mk.dense("v_proj", d, c.num_kv_heads * c.head_dim, c.qkv_bias)(xa).reshape(b, t, c.num_kv_heads, c.head_dim)
    inv_freq = common.rope_inv_freq(c.rope, c.head_dim)
    q, k = common.apply_rope(q, ctx.positions, inv_freq), common.apply_rope(k, ctx.positions, inv_freq)
    out, new_cache = common.attend_with_cache(q, k, v, ctx.positions, layer_cache, ctx.cache_pos, ctx.start,
                                              c.window(self.layer))
    xo = mk.site("o_in", "o_proj")(out, valid, ctx.detect)
    return mk.dense("o_proj", c.num_heads * c.head_dim, d, c.o_bias)(xo).reshape(b, t, d), new_cache


class LlamaMLP(nn.Module):
  cfg: ModelConfig
  mk: common.Builder

  @nn.compact
  def __call__(self, x, ctx: common.Ctx):  # [B, T, D]
    c, mk = self.cfg, self.mk
    b, t, d = x.shape
    f = c.intermediate_size
    valid = ctx.positions >= 0
    xa = mk.site("mlp_in", "gate_proj")(x, valid, ctx.detect)
    h = jax.nn.silu(mk.dense("gate_proj", d, f, c.mlp_bias)(xa)) * mk.dense("up_proj", d, f, c.mlp_bias)(xa)
    xd = mk.site("down_in", "down_proj")(h.reshape(b, t, f), valid, ctx.detect)
    return mk.dense("down_proj", f, d, c.mlp_bias)(xd).reshape(b, t, d)


class LlamaBlock(nn.Module):
  cfg: ModelConfig
  layer: int
  mk: common.Builder

  @nn.compact
  def __call__(self, x, ctx: common.Ctx, layer_cache=None):
    c, mk = self.cfg, self.mk
    h = common.make_norm(c, mk.param_dtype, "input_layernorm")(x)
    attn, new_cache = LlamaAttention(c, self.layer, mk.child("self_attn"), name="self_attn")(h, ctx, layer_cache)
    x = x + attn
    h = common.make_norm(c, mk.param_dtype, "post_attention_layernorm")(x)
    return x + LlamaMLP(c, mk.child("mlp"), name="mlp")(h, ctx), new_cache


def hf_layer_names(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Expected HF tensors of one layer, relative to `model.layers.{i}.`: name -> shape."""
  c = cfg
  q, kv, d, f = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.hidden_size, c.intermediate_size
  names = {
      "self_attn.q_proj.weight": (q, d), "self_attn.k_proj.weight": (kv, d), "self_attn.v_proj.weight": (kv, d),
      "self_attn.o_proj.weight": (d, q),
      "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f),
      "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
  }
  if c.qkv_bias:
    names |= {"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,)}
  if c.o_bias:
    names["self_attn.o_proj.bias"] = (d,)
  if c.mlp_bias:
    names |= {"mlp.gate_proj.bias": (f,), "mlp.up_proj.bias": (f,), "mlp.down_proj.bias": (d,)}
  return names


HF_PREFIX = "model.layers."
HF_TOP = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight", "lm_head": "lm_head.weight"}
