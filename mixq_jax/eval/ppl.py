"""WikiText-2 perplexity with the GPTQ protocol.

Rows are joined with "\\n\\n", the whole text is tokenized once with the tokenizer's default
special-token handling (`tokenizer(text)`), cut into non-overlapping windows of n_ctx tokens, and
each window's mean NLL over its n_ctx - 1 predicted tokens is averaged; ppl = exp(mean NLL).

    python -m mixq_jax.eval.ppl --model smollm2-135m --max-windows 8
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import pathlib
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mixq_jax.runtime import apply_model

REPO = pathlib.Path(__file__).resolve().parents[2]


def data_dir() -> pathlib.Path:
  """$MIXQ_DATA_DIR, else the `shared/data` folder beside the repository."""
  return pathlib.Path(os.environ.get("MIXQ_DATA_DIR", REPO.parent / "shared" / "data"))


def default_wikitext() -> pathlib.Path:
  return data_dir() / "wikitext2" / "test_rows.jsonl"


def read_text(path: str | os.PathLike) -> str:
  """A .jsonl of {"text": ...} rows joined with "\\n\\n", or a plain text file as is."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"perplexity data not found: {path} (set --data or MIXQ_DATA_DIR)")
  if path.suffix == ".jsonl":
    rows = []
    with path.open() as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          rows.append(json.loads(line)["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
          raise ValueError(f"{path}:{n}: expected a JSON object with a 'text' field ({e})") from None
    text = "\n\n".join(rows)
  else:
    text = path.read_text()
  if not text.strip():
    raise ValueError(f"perplexity data {path} is empty")
  return text


@dataclasses.dataclass(frozen=True)
class PplResult:
  ppl: float
  nll: float  # mean NLL per predicted token
  tokens: int  # predicted tokens scored
  windows: int
  n_ctx: int


@functools.partial(jax.jit, static_argnames=("model", "detect"))
def _window_nll(model, variables, tokens, detect):  # tokens [B, n_ctx] -> (mean NLL per window [B], variables)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  targets = jnp.roll(tokens, -1, axis=1)  # next token; the last position's is dropped below
  (nll, _), variables = apply_model(model, variables, tokens, positions, detect=detect, targets=targets)
  return nll[:, :-1].mean(axis=-1), variables


def perplexity(lm, text: str, *, n_ctx: int = 2048, max_windows: int | None = None, batch_size: int = 1,
               progress: bool = True) -> PplResult:
  """Perplexity of a runtime.LoadedModel on `text` (GPTQ protocol)."""
  if n_ctx < 2:
    raise ValueError(f"{n_ctx=} must be >= 2")
  if n_ctx > lm.config.max_position_embeddings:
    raise ValueError(f"{n_ctx=} exceeds the model's max_position_embeddings={lm.config.max_position_embeddings}")
  ids = np.asarray(lm.tokenizer(text)["input_ids"], np.int32)
  n = len(ids) // n_ctx
  if max_windows is not None:
    n = min(n, max_windows)
  if n == 0:
    raise ValueError(f"text has {len(ids)} tokens, fewer than one window of {n_ctx=}")
  windows = ids[: n * n_ctx].reshape(n, n_ctx)
  nlls = []
  for s in tqdm(range(0, n, batch_size), desc=f"ppl n_ctx={n_ctx}", unit="batch", disable=not progress):
    batch = windows[s:s + batch_size]
    pad = batch_size - len(batch)  # keep one compiled shape for the ragged last batch
    if pad:
      batch = np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)])
    nll, lm.variables = _window_nll(lm.model, lm.variables, jnp.asarray(batch), detect=lm.detect_left() > 0)
    lm.calls += 1
    nlls.append(np.asarray(nll)[: batch_size - pad])
  nll = float(np.concatenate(nlls).astype(np.float64).mean())
  return PplResult(math.exp(nll), nll, n * (n_ctx - 1), n, n_ctx)


def main(argv: Sequence[str] | None = None) -> None:
  from mixq_jax import runtime

  ap = argparse.ArgumentParser(prog="python -m mixq_jax.eval.ppl", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  runtime.add_model_args(ap)
  ap.add_argument("--n-ctx", type=int, default=2048, help="tokens per window (default 2048)")
  ap.add_argument("--max-windows", type=int, default=None, help="score only the first W windows (default: all)")
  ap.add_argument("--batch-size", type=int, default=1, help="windows per forward pass (default 1)")
  ap.add_argument("--data", default=None,
                  help="a .jsonl of {\"text\"} rows (joined with blank lines) or a plain text file; "
                       "default: WikiText-2 test from $MIXQ_DATA_DIR (default ../shared/data)")
  ap.add_argument("--json", metavar="OUT", help='write {"ppl", "nll", "tokens", "windows", "n_ctx"} here')
  args = ap.parse_args(argv)
  text = read_text(args.data or default_wikitext())
  lm = runtime.load_from_args(args)
  res = perplexity(lm, text, n_ctx=args.n_ctx, max_windows=args.max_windows, batch_size=args.batch_size)
  src = args.ckpt or args.model
  print(f"\n| model | scheme | n_ctx | windows | tokens | NLL | perplexity |\n|---|---|---|---|---|---|---|\n"
        f"| {src} | {lm.quant.get('scheme', '?')} | {res.n_ctx} | {res.windows} | {res.tokens} | {res.nll:.4f} "
        f"| {res.ppl:.3f} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dataclasses.asdict(res), f, indent=1)
  sys.stdout.flush()


if __name__ == "__main__":
  main()
