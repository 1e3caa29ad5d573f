"""End-to-end check of every 8-bit scheme on one machine: convert -> generate -> perplexity, with
the quantized layers on each implementation (XLA references vs Pallas kernels on a GPU).

    python bench/e2e_check.py --model ../shared/models/stories260K --n-ctx 256 --windows 16

Prints one table row per (scheme, impl): perplexity, its ratio to bf16 and to the xla row of the
same scheme, and the generated text; --json writes the rows.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import tempfile
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from mixq_jax import convert, runtime  # noqa: E402
from mixq_jax.eval import ppl  # noqa: E402
from mixq_jax.generate import generate  # noqa: E402


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model", required=True, help="model source (HF dir, .gguf, alias)")
  ap.add_argument("--schemes", default="bf16,w8a16,w8a8,llm_int8,mix8", help="comma-separated schemes")
  ap.add_argument("--impls", default=None, help="comma-separated impls (default: xla,pallas on a GPU, xla,interpret "
                                                "elsewhere)")
  ap.add_argument("--n-ctx", type=int, default=256, help="perplexity window (default 256)")
  ap.add_argument("--windows", type=int, default=16, help="perplexity windows (default 16)")
  ap.add_argument("--calib-samples", type=int, default=16, help="calibration sequences (default 16)")
  ap.add_argument("--calib-seq-len", type=int, default=256, help="calibration sequence length (default 256)")
  ap.add_argument("--prompt", default="Once upon a time", help="generation prompt")
  ap.add_argument("--json", metavar="OUT", help="write the rows as JSON")
  args = ap.parse_args()
  gpu = jax.default_backend() == "gpu"
  impls = (args.impls or ("xla,pallas" if gpu else "xla,interpret")).split(",")
  text = ppl.read_text(ppl.default_wikitext())
  opts = convert.ConvertOptions(calib_samples=args.calib_samples, calib_seq_len=args.calib_seq_len)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for scheme in args.schemes.split(","):
      t0 = time.perf_counter()
      ck = convert.convert(args.model, scheme, f"{tmp}/{scheme}", options=opts, progress=False)
      t_conv = time.perf_counter() - t0
      for impl in impls:
        lm = runtime.load(ckpt=ck, impl=impl)
        gen = generate(lm, [args.prompt], max_new_tokens=24)
        res = ppl.perplexity(lm, text, n_ctx=args.n_ctx, max_windows=args.windows, batch_size=4, progress=False)
        rows.append({"scheme": scheme, "impl": impl, "ppl": res.ppl, "tokens": res.tokens, "convert_s": t_conv,
                     "text": gen.texts[0]})
  bf16 = next((r["ppl"] for r in rows if r["scheme"] == "bf16"), None)
  dev = jax.devices()[0]
  print(f"\ndevice: {dev.device_kind} ({dev.platform}), jax {jax.__version__}, python {platform.python_version()}, "
        f"model {args.model}, n_ctx {args.n_ctx} x {args.windows} windows")
  print("| scheme | impl | perplexity | vs bf16 | vs xla | generated |\n|---|---|---|---|---|---|")
  for r in rows:
    xla = next(x["ppl"] for x in rows if x["scheme"] == r["scheme"] and x["impl"] == impls[0])
    vs_bf16 = f"{r['ppl'] / bf16 - 1:+.3%}" if bf16 else "-"
    print(f"| {r['scheme']} | {r['impl']} | {r['ppl']:.4f} | {vs_bf16} | {r['ppl'] / xla - 1:+.4%} | "
          f"{r['text'][:60]!r} |")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
  main()
