"""Loads a model source (HF dir, .gguf, alias) or a mixq_jax checkpoint for use.

Everything user-facing (generate, eval, bench) enters here, so every CLI takes the same
`--ckpt DIR | --model SRC` and `--fp32` options.
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


@dataclasses.dataclass
class LoadedModel:
  config: ModelConfig
  params: Any
  tokenizer: Any  # a transformers tokenizer
  compute_dtype: Any
  model: Transformer
  quant: dict = dataclasses.field(default_factory=lambda: {"scheme": "bf16"})
  source: str = ""

  def logits(self, tokens, positions) -> jax.Array:
    """tokens, positions [B, T] int32 (position -1 = padding) -> logits [B, T, V] float32 (jitted)."""
    return _forward(self.model, self.params, jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32))


@functools.partial(jax.jit, static_argnames=("model",))
def _forward(model, params, tokens, positions):
  return model.apply({"params": params}, tokens, positions)[0]


def _cast_floats(tree, dtype):
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def load(source: str | None = None, ckpt: str | None = None, *, fp32: bool = False, impl: str = "xla") -> LoadedModel:
  """Exactly one of `source` (HF dir | .gguf | alias such as "smollm2-135m") or `ckpt` (a directory
  written by `python -m mixq_jax.convert`). fp32 computes in float32 (parity checks); default bf16."""
  if (source is None) == (ckpt is None):
    raise ValueError("give exactly one of --model SRC or --ckpt DIR")
  dtype = jnp.float32 if fp32 else jnp.bfloat16
  if ckpt is not None:
    from mixq_jax.io import checkpoint

    ck = checkpoint.load_checkpoint(ckpt)
    cfg = ModelConfig.from_dict(ck.config)
    tok = checkpoint.load_checkpoint_tokenizer(ckpt)
    if tok is None:
      raise ValueError(f"checkpoint {ckpt} has no tokenizer/ folder; re-run convert")
    params = _cast_floats(ck.params, dtype)
    return LoadedModel(cfg, params, tok, dtype, Transformer(cfg, dtype, impl), dict(ck.quant), str(ckpt))
  from mixq_jax import io

  raw = io.load_source(source)
  cfg = ModelConfig.from_hf(raw.hf_config)
  params = params_from_hf(cfg, raw.tensors, dtype)
  tok = io.load_tokenizer(source)
  return LoadedModel(cfg, params, tok, dtype, Transformer(cfg, dtype, impl), {"scheme": "fp32" if fp32 else "bf16"},
                     raw.source)


def add_model_args(ap: argparse.ArgumentParser) -> None:
  g = ap.add_mutually_exclusive_group(required=True)
  g.add_argument("--ckpt", metavar="DIR", help="checkpoint directory written by `python -m mixq_jax.convert`")
  g.add_argument("--model", metavar="SRC",
                 help="model source: a HF directory (config.json + safetensors), a llama .gguf file, "
                      "or an alias (smollm2-135m)")
  ap.add_argument("--fp32", action="store_true", help="compute in float32 instead of bfloat16 (for parity checks)")


def load_from_args(args: argparse.Namespace) -> LoadedModel:
  return load(source=args.model, ckpt=args.ckpt, fp32=args.fp32)
