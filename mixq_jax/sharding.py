"""Tensor parallelism (Megatron style) through jax.sharding: a 1-D mesh with axis "tp".

Column-parallel (output features N split): q/k/v, gate/up, Falcon query_key_value and
dense_h_to_4h, the untied LM head. Row-parallel (input features K split): o_proj, down_proj,
Falcon dense and dense_4h_to_h; XLA's SPMD partitioner then inserts one all-reduce after each
row-parallel product, i.e. one after attention and one after the MLP of every block. The KV cache
is split by kv heads (replicated when the kv heads do not divide, e.g. multi-query).

Quantized tensors follow their weight: per-channel scales s_w [N] split with N on column-parallel
layers and replicated on row-parallel ones; SmoothQuant factors [K] split with K on row-parallel
sites. MixQ / LLM.int8 outlier columns of row-parallel layers are REPLICATED, not split with the K
shard: w_o [N, C] is small (C <= 256), and a replicated outlier set keeps online prediction one
global decision (the set and its count live in the replicated `outliers` state), at the price of
gathering x_I [M, C] (C values per token) from the K shards. The per-token activation scale of a
row-parallel layer is a max over all of K, which the partitioner computes with an all-reduce(max).

Leaves whose split dimension does not divide by the mesh size are replicated (always correct).

The Pallas kernels are custom calls that the SPMD partitioner cannot split, so with impl pallas
(or interpret) each kernel call runs under `shard_map` (layers.qmatmul): a column-parallel layer
multiplies its N shard and returns an N-split output; a row-parallel layer multiplies its K shard
into a float32 partial, shard 0 alone adds the replicated outlier product and the bias, and one
psum completes the sum. Activation quantization runs replicated on every device (the input of a
row-parallel site is all-gathered first: its per-token scale is a max over all of K).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mixq_jax.config import ModelConfig
from mixq_jax.schemes import OUTLIER_COLS

AXIS = "tp"
COLUMN = {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "query_key_value", "dense_h_to_4h", "lm_head"}
ROW = {"o_proj", "down_proj", "dense", "dense_4h_to_h"}
ROW_SITES = {"o_in", "down_in"}


def layer_role(name: str) -> str | None:
  """"column", "row" or None (replicated) for a Dense layer's module name."""
  return "column" if name in COLUMN else "row" if name in ROW else None


def shard_map(fn, mesh: Mesh, *, in_specs, out_specs):
  """jax.shard_map with the replication check off (a Pallas call has no replication rule), across
  the jax versions this package supports."""
  if hasattr(jax, "shard_map"):
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
  from jax.experimental.shard_map import shard_map as legacy  # noqa: PLC0415 -- jax < 0.7

  return legacy(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def make_mesh(tp: int) -> Mesh:
  devices = jax.devices()
  if tp < 1 or tp > len(devices):
    raise ValueError(f"--tp {tp} needs that many devices; this machine has {len(devices)} ({devices[0].platform})")
  return Mesh(np.asarray(devices[:tp]), (AXIS,))


def check_divisible(cfg: ModelConfig, tp: int) -> None:
  """Heads must split evenly across the mesh, as in Megatron."""
  if cfg.num_heads % tp:
    raise ValueError(f"num_attention_heads={cfg.num_heads} is not divisible by --tp {tp}")
  if cfg.intermediate_size % tp:
    raise ValueError(f"intermediate_size={cfg.intermediate_size} is not divisible by --tp {tp}")


def _spec(path: tuple[str, ...], shape: tuple[int, ...], tp: int) -> P:
  if not path:
    return P()
  leaf = path[-1]
  owner = path[-2] if len(path) > 1 else ""

  def split(dim: int) -> P:
    if shape[dim] % tp:
      return P()
    spec = [None] * len(shape)
    spec[dim] = AXIS
    return P(*spec)

  if owner in COLUMN and leaf in ("weight", "w_q", "w_o", "s_w", "bias"):
    return split(0)
  if owner in ROW and leaf in ("weight", "w_q"):
    return split(1)
  if owner in ROW_SITES and leaf == "smooth_inv":
    return split(0)
  return P()  # norms, embedding, row-parallel scales/bias/w_o, outlier state: replicated


def variable_specs(variables: dict[str, Any], tp: int) -> Any:
  """A PartitionSpec for every leaf of {"params", "outliers", "outlier_cols"}."""
  def spec(path, leaf):
    keys = tuple(getattr(k, "key", str(k)) for k in path)
    shape = leaf.shape if hasattr(leaf, "shape") else np.shape(leaf)  # arrays or ShapeDtypeStructs
    # The outlier-column cache is laid out like the params it is derived from (w_o of each layer).
    return _spec(keys if keys[0] in ("params", OUTLIER_COLS) else (), tuple(shape), tp)
  return jax.tree_util.tree_map_with_path(spec, variables)


def variable_shardings(variables: dict[str, Any], mesh: Mesh) -> Any:
  """A NamedSharding for every leaf (arrays or ShapeDtypeStructs) of {"params", "outliers"}."""
  specs = variable_specs(variables, mesh.shape[AXIS])
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def shard_variables(variables: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
  return jax.tree.map(jax.device_put, variables, variable_shardings(variables, mesh))


def cache_spec(num_kv_heads: int, tp: int) -> P:
  """KV cache layers [B, S, G, Dh]: split by kv heads when they divide."""
  return P(None, None, AXIS, None) if num_kv_heads % tp == 0 else P()


def cache_shardings(num_kv_heads: int, cache: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
  """NamedShardings for a cache {"pos", "layers": [{"k", "v"}, ...]} (arrays or ShapeDtypeStructs)."""
  kv = NamedSharding(mesh, cache_spec(num_kv_heads, mesh.shape[AXIS]))
  return {"pos": NamedSharding(mesh, P()), "layers": [{k: kv for k in layer} for layer in cache["layers"]]}
