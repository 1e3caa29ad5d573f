"""Llama-family decoder block (Llama 2/3, Mistral, Qwen2): pre-norm attention + SwiGLU MLP.

HF tensor names, relative to `model.layers.{i}.`, are the Flax parameter paths inside the block.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixq_jax.config import ModelConfig
from mixq_jax.layers import QuantDense
from mixq_jax.models import common


class LlamaAttention(nn.Module):
  cfg: ModelConfig
  layer: int
  param_dtype: Any
  impl: str

  @nn.compact
  def __call__(self, x, positions, layer_cache, cache_pos, start):  # x [B, T, D]
    c = self.cfg
    dense = lambda n, name, bias: QuantDense(n, bias, self.param_dtype, self.impl, name=name)
    b, t, _ = x.shape
    q = dense(c.num_heads * c.head_dim, "q_proj", c.qkv_bias)(x).reshape(b, t, c.num_heads, c.head_dim)
    k = dense(c.num_kv_heads * c.head_dim, "k_proj", c.qkv_bias)(x).reshape(b, t, c.num_kv_heads, c.head_dim)
    v = dense(c.num_kv_heads * c.head_dim, "v_proj", c.qkv_bias)(x).reshape(b, t, c.num_kv_heads, c.head_dim)
    inv_freq = common.rope_inv_freq(c.rope, c.head_dim)
    q, k = common.apply_rope(q, positions, inv_freq), common.apply_rope(k, positions, inv_freq)
    out, new_cache = common.attend_with_cache(q, k, v, positions, layer_cache, cache_pos, start, c.window(self.layer))
    return dense(c.hidden_size, "o_proj", c.o_bias)(out), new_cache


class LlamaMLP(nn.Module):
  cfg: ModelConfig
  param_dtype: Any
  impl: str

  @nn.compact
  def __call__(self, x):  # [B, T, D]
    c = self.cfg
    dense = lambda n, name: QuantDense(n, c.mlp_bias, self.param_dtype, self.impl, name=name)
    gate = dense(c.intermediate_size, "gate_proj")(x)
    up = dense(c.intermediate_size, "up_proj")(x)
    return dense(c.hidden_size, "down_proj")(jax.nn.silu(gate) * up)


class LlamaBlock(nn.Module):
  cfg: ModelConfig
  layer: int
  param_dtype: Any = jnp.bfloat16
  impl: str = "xla"

  @nn.compact
  def __call__(self, x, positions, layer_cache=None, cache_pos=None, start=0):
    c = self.cfg
    h = common.make_norm(c, self.param_dtype, "input_layernorm")(x)
    attn, new_cache = LlamaAttention(c, self.layer, self.param_dtype, self.impl, name="self_attn")(
        h, positions, layer_cache, cache_pos, start)
    x = x + attn
    h = common.make_norm(c, self.param_dtype, "post_attention_layernorm")(x)
    return x + LlamaMLP(c, self.param_dtype, self.impl, name="mlp")(h), new_cache


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
