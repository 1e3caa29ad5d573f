"""PNG plots of bench/throughput.py results (matplotlib, Agg backend).

    python bench/plots.py RESULTS.json --out DIR [--accuracy SCHEME=PPL_JSON ...]

decode_vs_batch_P{P}.png: decode tokens/s against batch size, one line per scheme (log-log).
ppl_vs_speed.png: WikiText-2 perplexity against decode tokens/s at the smallest batch, one point per
scheme, when perplexity JSONs (`python -m mixq_jax.eval.ppl --json`) are given.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Sequence


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def decode_vs_batch(records: list[dict], out: pathlib.Path, title: str = "") -> list[pathlib.Path]:
  plt = _plt()
  gen = [r for r in records if r.get("kind") != "ppl" and r.get("status") == "ok" and r.get("decode_tok_s")]
  paths = []
  for p in sorted({r["prompt_len"] for r in gen}):
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for s in dict.fromkeys(r["scheme"] for r in gen):
      pts = sorted((r["batch"], r["decode_tok_s"]) for r in gen if r["scheme"] == s and r["prompt_len"] == p)
      ax.plot([b for b, _ in pts], [t for _, t in pts], marker="o", label=s,
              linestyle="--" if s.startswith("torch") else "-")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="decode tokens/s",
           title=f"{title} decode, prompt {p}, decode {gen[0]['decode_len']}".strip())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / f"decode_vs_batch_P{p}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path)
  return paths


def ppl_vs_speed(records: list[dict], accuracy: dict[str, str], out: pathlib.Path, title: str = "") -> list[pathlib.Path]:
  """accuracy: scheme -> path of a perplexity JSON ({"ppl": ...})."""
  gen = [r for r in records if r.get("kind") != "ppl" and r.get("status") == "ok" and r.get("decode_tok_s")]
  pts = []
  for s, path in accuracy.items():
    rs = [r for r in gen if r["scheme"] == s]
    if not rs:
      continue
    r = min(rs, key=lambda r: (r["batch"], r["prompt_len"]))
    pts.append((s, r["decode_tok_s"], float(json.loads(pathlib.Path(path).read_text())["ppl"]), r["batch"]))
  if not pts:
    return []
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for s, tps, ppl, _ in pts:
    ax.scatter(tps, ppl)
    ax.annotate(s, (tps, ppl), textcoords="offset points", xytext=(4, 4))
  ax.set(xlabel=f"decode tokens/s (batch {pts[0][3]})", ylabel="WikiText-2 perplexity",
         title=f"{title} perplexity vs speed".strip())
  ax.grid(True, alpha=0.3)
  fig.tight_layout()
  path = out / "ppl_vs_speed.png"
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return [path]


def write_all(records: list[dict], out: pathlib.Path, *, title: str = "",
              accuracy: dict[str, str] | None = None) -> list[pathlib.Path]:
  out.mkdir(parents=True, exist_ok=True)
  return decode_vs_batch(records, out, title) + ppl_vs_speed(records, accuracy or {}, out, title)


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(prog="python bench/plots.py", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("results", help="JSON written by bench/throughput.py --json")
  ap.add_argument("--out", required=True, help="folder for the PNG files")
  ap.add_argument("--accuracy", action="append", default=[], metavar="SCHEME=PPL_JSON",
                  help="perplexity JSON (from python -m mixq_jax.eval.ppl --json) of a scheme; repeat per scheme; adds the "
                       "perplexity vs tokens/s plot")
  args = ap.parse_args(argv)
  data = json.loads(pathlib.Path(args.results).read_text())
  acc = dict(a.split("=", 1) for a in args.accuracy)
  for p in write_all(data["records"], pathlib.Path(args.out), title=data.get("model", ""), accuracy=acc):
    print(f"wrote {p}")


if __name__ == "__main__":
  main()
