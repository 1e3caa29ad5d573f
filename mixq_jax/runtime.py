"""Loads a model source (HF dir, .gguf, alias) or a mixq_jax checkpoint for use.

Everything user-facing (generate, eval, bench) enters here, so every CLI takes the same
`--ckpt DIR | --model SRC`, `--fp32` and `--impl` options.

Quantized models with online outlier prediction (mix8) carry state next to their parameters: the
`outliers` variable collection (per site: idx [C], count, calib_count). It is threaded through
every call like a KV cache; the first `plan.detect_calls` calls may grow it, later calls reuse it
frozen. `LoadedModel` keeps the current state and the number of calls made. Next to it, the derived
`outlier_cols` collection caches each layer's 16-bit weight columns for the current sets (built at
load, rebuilt by the detecting calls), so that frozen calls read [N, C] columns instead of gathering
them from the int8 weights on every call.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from mixq_jax.config import ModelConfig
from mixq_jax.models.transformer import Transformer, params_from_hf
from mixq_jax.layers import with_outlier_cache
from mixq_jax.schemes import OUTLIER_COLS, QuantPlan

IMPLS = ("auto", "xla", "pallas", "interpret")


def resolve_impl(impl: str) -> str:
  """auto -> pallas on a GPU, xla elsewhere."""
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r} must be one of {IMPLS}")
  if impl == "auto":
    return "pallas" if jax.default_backend() == "gpu" else "xla"
  return impl


def apply_model(model: Transformer, variables: dict, *args, detect: bool = False, **kwargs):
  """model.apply that threads the `outliers` state: returns (outputs, new variables)."""
  if "outliers" not in variables:
    return model.apply(variables, *args, detect=False, **kwargs), variables
  # The column cache changes only where the sets can: it is read-only in frozen calls.
  mutable = ["outliers"] + ([OUTLIER_COLS] if detect and OUTLIER_COLS in variables else [])
  out, mutated = model.apply(variables, *args, detect=detect, mutable=mutable, **kwargs)
  return out, {**variables, **mutated}


@dataclasses.dataclass
class LoadedModel:
  config: ModelConfig
  variables: dict  # {"params": ..., optionally "outliers": ...}
  tokenizer: Any  # a transformers tokenizer
  compute_dtype: Any
  model: Transformer
  quant: dict = dataclasses.field(default_factory=lambda: {"scheme": "bf16"})
  source: str = ""
  calls: int = 0  # model calls made so far (mix8 detection runs for the first plan.detect_calls)

  @property
  def params(self):
    return self.variables["params"]

  @property
  def plan(self) -> QuantPlan:
    return self.model.plan

  def detect_left(self) -> int:
    """Calls that may still grow the outlier sets."""
    return max(self.plan.detect_calls - self.calls, 0) if "outliers" in self.variables else 0

  def logits(self, tokens, positions) -> jax.Array:
    """tokens, positions [B, T] int32 (position -1 = padding) -> logits [B, T, V] float32 (jitted)."""
    out, self.variables = _forward(self.model, self.variables, jnp.asarray(tokens, jnp.int32),
                                   jnp.asarray(positions, jnp.int32), detect=self.detect_left() > 0)
    self.calls += 1
    return out


@functools.partial(jax.jit, static_argnames=("model", "detect"))
def _forward(model, variables, tokens, positions, detect):
  (logits, _), variables = apply_model(model, variables, tokens, positions, detect=detect)
  return logits, variables


_QUANT_LEAVES = ("s_w", "smooth_inv", "w_o")  # quantization data keeps its stored dtype


def _cast_floats(tree, dtype):
  """Model floats (weights, norms, embedding, biases) to the compute dtype."""
  def cast(path, a):
    name = getattr(path[-1], "key", None)
    return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) and name not in _QUANT_LEAVES else a
  return jax.tree_util.tree_map_with_path(cast, tree)


def load(source: str | None = None, ckpt: str | None = None, *, fp32: bool = False, impl: str = "auto",
         tp: int = 1) -> LoadedModel:
  """Exactly one of `source` (HF dir | .gguf | alias such as "smollm2-135m") or `ckpt` (a directory
  written by `python -m mixq_jax.convert`). fp32 computes in float32 (parity checks); default bf16.
  impl: how quantized layers run (auto = Pallas kernels on a GPU, XLA elsewhere).
  tp: tensor-parallel degree over the first tp devices (mixq_jax.sharding); the XLA path is split by
  the SPMD partitioner, the Pallas kernels run under shard_map."""
  lm = _load(source, ckpt, fp32=fp32, impl=impl)
  if tp > 1:
    from mixq_jax import sharding

    sharding.check_divisible(lm.config, tp)
    mesh = sharding.make_mesh(tp)
    lm.variables = sharding.shard_variables(lm.variables, mesh)
    lm.model = lm.model.clone(mesh=mesh)
  return lm


def _load(source, ckpt, *, fp32, impl) -> LoadedModel:
  if (source is None) == (ckpt is None):
    raise ValueError("give exactly one of --model SRC or --ckpt DIR")
  dtype = jnp.float32 if fp32 else jnp.bfloat16
  impl = resolve_impl(impl)
  if ckpt is not None:
    from mixq_jax.io import checkpoint

    ck = checkpoint.load_checkpoint(ckpt)
    cfg = ModelConfig.from_dict(ck.config)
    tok = checkpoint.load_checkpoint_tokenizer(ckpt)
    if tok is None:
      raise ValueError(f"checkpoint {ckpt} has no tokenizer/ folder; re-run convert")
    variables = dict(ck.params) if "params" in ck.params else {"params": ck.params}
    variables["params"] = _cast_floats(variables["params"], dtype)
    plan = QuantPlan.from_dict(ck.quant.get("plan", {}))
    variables = with_outlier_cache(variables, plan)
    return LoadedModel(cfg, variables, tok, dtype, Transformer(cfg, dtype, impl, plan), dict(ck.quant), str(ckpt))
  from mixq_jax import io

  raw = io.load_source(source)
  cfg = ModelConfig.from_hf(raw.hf_config)
  params = params_from_hf(cfg, raw.tensors, dtype)
  tok = io.load_tokenizer(source)
  return LoadedModel(cfg, {"params": params}, tok, dtype, Transformer(cfg, dtype, impl),
                     {"scheme": "fp32" if fp32 else "bf16"}, raw.source)


def add_model_args(ap: argparse.ArgumentParser) -> None:
  g = ap.add_mutually_exclusive_group(required=True)
  g.add_argument("--ckpt", metavar="DIR", help="checkpoint directory written by `python -m mixq_jax.convert`")
  g.add_argument("--model", metavar="SRC",
                 help="model source: a HF directory (config.json + safetensors), a llama .gguf file, "
                      "or an alias (smollm2-135m)")
  ap.add_argument("--fp32", action="store_true", help="compute in float32 instead of bfloat16 (for parity checks)")
  ap.add_argument("--impl", default="auto", choices=IMPLS,
                  help="how quantized layers run: pallas kernels, their XLA references, or the kernels in "
                       "Pallas interpret mode; auto = pallas on a GPU, xla elsewhere")
  ap.add_argument("--tp", type=int, default=1,
                  help="tensor-parallel degree: shard the model over this many devices (default 1)")


def load_from_args(args: argparse.Namespace) -> LoadedModel:
  return load(source=args.model, ckpt=args.ckpt, fp32=args.fp32, impl=getattr(args, "impl", "auto"),
              tp=getattr(args, "tp", 1))
