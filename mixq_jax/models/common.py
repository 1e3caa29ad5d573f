"""Blocks shared by every decoder family: norms, RoPE, attention with a KV cache.

Shape letters: B batch, T query length, S key length (cache size), D hidden size, H query heads,
G kv heads, R = H // G query heads per kv head, Dh head dim.

Positions drive every mask: a token's position is its index in its own sequence, and -1 marks a
padding slot. Keys are visible to a query when 0 <= kv_pos <= q_pos (and q_pos - kv_pos < window
for sliding-window layers), which covers causality, left/right padding and the preallocated cache.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mixq_jax.config import ModelConfig, RopeConfig
from mixq_jax.layers import ActQuant, QuantDense
from mixq_jax.schemes import QuantPlan

Array = jax.Array
Cache = dict[str, Any]  # {"pos": [B, S] int32, "layers": [{"k": [B, S, G, Dh], "v": [B, S, G, Dh]}, ...]}

class Ctx(NamedTuple):
  """Per-call inputs every block needs."""
  positions: Array  # [B, T] int32, -1 = padding
  cache_pos: Array | None  # [B, S] positions held by the cache slots after this call's write
  start: Any  # cache slot of the first new token
  detect: bool  # mix8 online outlier detection active in this call (static)


class Builder(NamedTuple):
  """Makes the QuantDense layers and activation sites of one module from the plan (static)."""
  plan: QuantPlan
  prefix: str  # layer path prefix, e.g. "layers_3.self_attn"
  param_dtype: Any
  impl: str
  calibrate: bool
  mesh: Any = None  # tensor-parallel mesh, for the Pallas kernels' shard_map (layers.qmatmul)
  detect: bool = False  # the call may grow the outlier sets (QuantDense then rebuilds its columns)

  def dense(self, name: str, k: int, n: int, bias: bool) -> QuantDense:
    return QuantDense(k, n, bias, self.param_dtype, self.impl, self.plan.get(self._path(name)), self.mesh,
                      self.detect, name=name)

  def site(self, name: str, first_layer: str) -> ActQuant:
    """The site in front of `first_layer` (layers of a site share one LayerQuant, see schemes.site_of)."""
    return ActQuant(self.plan.get(self._path(first_layer)), self.impl, self.calibrate, self.mesh, name=name)

  def child(self, name: str) -> "Builder":
    return self._replace(prefix=self._path(name))

  def _path(self, name: str) -> str:
    # Top-level layers (the LM head) have no prefix: their plan path is "lm_head", not ".lm_head".
    return f"{self.prefix}.{name}" if self.prefix else name


_MASKED = -1e30  # finite, so fully masked (padding) rows give a uniform softmax instead of NaN


class RMSNorm(nn.Module):
  eps: float
  param_dtype: Any = jnp.bfloat16

  @nn.compact
  def __call__(self, x: Array) -> Array:
    w = self.param("weight", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    # HF casts back to the input dtype before the weight multiply; keep that rounding order.
    return w.astype(x.dtype) * xf.astype(x.dtype)


class LayerNorm(nn.Module):
  eps: float
  param_dtype: Any = jnp.bfloat16

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    w = self.param("weight", nn.initializers.ones, (d,), self.param_dtype)
    b = self.param("bias", nn.initializers.zeros, (d,), self.param_dtype)
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * w.astype(jnp.float32) + b.astype(jnp.float32)).astype(x.dtype)


def make_norm(cfg: ModelConfig, param_dtype, name: str) -> nn.Module:
  cls = RMSNorm if cfg.norm == "rms" else LayerNorm
  return cls(eps=cfg.norm_eps, param_dtype=param_dtype, name=name)


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> np.ndarray:
  """Inverse frequencies [Dh/2] (float32), with linear or llama3 scaling as in HF."""
  inv = 1.0 / (rope.theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
  if rope.type == "linear":
    inv = inv / rope.factor
  elif rope.type == "llama3":
    old = rope.original_max_position_embeddings
    low_wavelen = old / rope.low_freq_factor
    high_wavelen = old / rope.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / rope.factor, inv)
    smooth = (old / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    inv = np.where(medium, smoothed, scaled)
  return inv.astype(np.float32)


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
  """x [B, T, N, Dh] rotated by positions [B, T] (HF rotate_half convention)."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, Dh/2]
  cos = jnp.concatenate([jnp.cos(freqs)] * 2, axis=-1)[:, :, None, :].astype(x.dtype)
  sin = jnp.concatenate([jnp.sin(freqs)] * 2, axis=-1)[:, :, None, :].astype(x.dtype)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin


def attention(q: Array, k: Array, v: Array, q_pos: Array, kv_pos: Array, window: int | None) -> Array:
  """Grouped-query attention.

  q [B, T, H, Dh]; k, v [B, S, G, Dh]; q_pos [B, T]; kv_pos [B, S] (-1 = empty/padding).
  Returns [B, T, H * Dh] in q.dtype. Scores and softmax in float32.
  """
  b, t, h, dh = q.shape
  g = k.shape[2]
  qg = q.reshape(b, t, g, h // g, dh)
  scores = jnp.einsum("btgrd,bsgd->bgrts", qg, k, preferred_element_type=jnp.float32) / math.sqrt(dh)
  visible = (kv_pos[:, None, :] >= 0) & (kv_pos[:, None, :] <= q_pos[:, :, None])  # [B, T, S]
  if window is not None:
    visible &= (q_pos[:, :, None] - kv_pos[:, None, :]) < window
  scores = jnp.where(visible[:, None, None], scores, _MASKED)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bgrts,bsgd->btgrd", probs, v, preferred_element_type=jnp.float32)
  return out.reshape(b, t, h * dh).astype(q.dtype)


def attend_with_cache(q, k, v, positions, layer_cache, cache_pos, start, window):
  """Writes k, v [B, T, G, Dh] into the layer cache at slot `start`, then attends over the cache.

  Without a cache (layer_cache None) attends over the T new tokens only.
  Returns (out [B, T, H*Dh], new layer cache or None).
  """
  if layer_cache is None:
    return attention(q, k, v, positions, positions, window), None
  kc = jax.lax.dynamic_update_slice(layer_cache["k"], k.astype(layer_cache["k"].dtype), (0, start, 0, 0))
  vc = jax.lax.dynamic_update_slice(layer_cache["v"], v.astype(layer_cache["v"].dtype), (0, start, 0, 0))
  out = attention(q, kc.astype(q.dtype), vc.astype(q.dtype), positions, cache_pos, window)
  return out, {"k": kc, "v": vc}


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=jnp.bfloat16, mesh=None) -> Cache:
  """An empty KV cache of `length` slots per sequence; every slot starts as padding (pos -1).
  With a tensor-parallel mesh the k/v buffers are split by kv heads (sharding.cache_spec)."""
  shape = (batch, length, cfg.num_kv_heads, cfg.head_dim)

  def buf():
    z = jnp.zeros(shape, dtype)
    if mesh is None:
      return z
    from mixq_jax.sharding import cache_spec

    return jax.lax.with_sharding_constraint(z, jax.sharding.NamedSharding(mesh, cache_spec(cfg.num_kv_heads, mesh.size)))

  return {"pos": jnp.full((batch, length), -1, jnp.int32),
          "layers": [{"k": buf(), "v": buf()} for _ in range(cfg.num_layers)]}


def update_cache_pos(cache: Cache, positions: Array, start) -> Array:
  """Cache positions [B, S] after writing `positions` [B, T] at slot `start`."""
  return jax.lax.dynamic_update_slice(cache["pos"], positions.astype(jnp.int32), (0, start))
