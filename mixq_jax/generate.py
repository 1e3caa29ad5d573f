"""Generation as a few pure functions: prefill, decode_step, sample, and a jitted decode loop.

Shape letters: B batch, P padded prompt length, N max new tokens, S = P + N cache slots, V vocab.

Prompts of different lengths are left-padded to P, so every row's last prompt token sits in slot
P - 1 and decode steps write one shared slot per step; padding slots carry position -1 and are
never attended to.

    python -m mixq_jax.generate --model smollm2-135m --prompt "The capital of France is"
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mixq_jax.models import common
from mixq_jax.models.transformer import Transformer
from mixq_jax.runtime import apply_model


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
  temperature: float = 0.0  # 0 = greedy
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1 = off

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature={self.temperature} must be >= 0")
    if self.top_k < 0:
      raise ValueError(f"top_k={self.top_k} must be >= 0")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p={self.top_p} must be in (0, 1]")


def sample(logits: jax.Array, key: jax.Array, sc: SamplingConfig) -> jax.Array:
  """Next tokens [B] from logits [B, V] with temperature, top-k and top-p (nucleus) filtering."""
  if sc.temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / sc.temperature
  if sc.top_k > 0:
    kth = jax.lax.top_k(logits, min(sc.top_k, logits.shape[-1]))[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if sc.top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    cum_before = jnp.cumsum(probs, axis=-1) - probs
    keep = cum_before < sc.top_p
    cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def prefill(model: Transformer, variables, tokens, positions, cache, *, detect: bool = False):
  """tokens, positions [B, P] (left-padded, pad position -1) -> (last logits [B, V], cache, variables)."""
  (logits, cache), variables = apply_model(model, variables, tokens, positions, cache, 0, last_only=True,
                                           detect=detect)
  return logits[:, -1], cache, variables


def decode_step(model: Transformer, variables, token, position, cache, slot, *, detect: bool = False):
  """One token per row: token, position [B] written at cache slot `slot` -> (logits [B, V], cache, variables)."""
  (logits, cache), variables = apply_model(model, variables, token[:, None], position[:, None], cache, slot,
                                           detect=detect)
  return logits[:, 0], cache, variables


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "sc", "eos_ids", "cache_dtype",
                                             "detect_calls"))
def _generate_jit(model, variables, tokens, positions, key, *, max_new_tokens, sc, eos_ids, cache_dtype,
                  detect_calls=0):
  """Prefill + decode loop. The first `detect_calls` model calls run with outlier detection
  (unrolled), the rest in a lax.while_loop with the outlier sets frozen."""
  b, p = tokens.shape
  cache = common.init_cache(model.cfg, b, p + max_new_tokens, cache_dtype, model.mesh)  # allocated in the jit
  eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
  pad_tok = eos_ids[0] if eos_ids else 0
  logits, cache, variables = prefill(model, variables, tokens, positions, cache, detect=detect_calls > 0)
  key, sub = jax.random.split(key)
  first = sample(logits, sub, sc)
  out = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(first)
  done = jnp.isin(first, eos)
  next_pos = jnp.max(positions, axis=1) + 1  # [B]

  def body(state, detect=False):
    i, out, cache, variables, done, pos, key = state
    logits, cache, variables = decode_step(model, variables, out[:, i - 1], pos, cache, p + i - 1, detect=detect)
    key, sub = jax.random.split(key)
    tok = jnp.where(done, pad_tok, sample(logits, sub, sc))
    out = out.at[:, i].set(tok)
    return i + 1, out, cache, variables, done | jnp.isin(tok, eos), pos + 1, key

  state = (jnp.int32(1), out, cache, variables, done, next_pos, key)
  for _ in range(min(max(detect_calls - 1, 0), max_new_tokens - 1)):
    state = body(state, detect=True)
  state = jax.lax.while_loop(lambda s: (s[0] < max_new_tokens) & ~jnp.all(s[4]), body, state)
  i, out, _, variables, _, _, _ = state
  return out, i, variables


@dataclasses.dataclass(frozen=True)
class GenerateResult:
  token_ids: list[list[int]]  # generated ids per prompt, cut after the first EOS (EOS included)
  texts: list[str]
  prompt_tokens: int
  new_tokens: int
  seconds: float


def generate(lm, prompts: Sequence[str] | Sequence[Sequence[int]], *, max_new_tokens: int = 64,
             sampling: SamplingConfig = SamplingConfig(), seed: int = 0, stop_on_eos: bool = True) -> GenerateResult:
  """Generates continuations for a batch of prompts (strings or token-id lists) with a loaded model.

  `lm` is a runtime.LoadedModel. Greedy when sampling.temperature == 0.
  """
  if max_new_tokens < 1:
    raise ValueError(f"{max_new_tokens=} must be >= 1")
  if not prompts:
    raise ValueError("no prompts given")
  ids = [lm.tokenizer(p)["input_ids"] if isinstance(p, str) else list(p) for p in prompts]
  if any(len(x) == 0 for x in ids):
    raise ValueError("a prompt encodes to zero tokens")
  p_len = max(len(x) for x in ids)
  p_pad = -(-p_len // 16) * 16  # bucket so nearby prompt lengths share one compilation
  if p_pad + max_new_tokens > lm.config.max_position_embeddings:
    print(f"warning: {p_len} prompt + {max_new_tokens} new tokens exceed max_position_embeddings="
          f"{lm.config.max_position_embeddings}", file=sys.stderr)
  b = len(ids)
  tokens = np.zeros((b, p_pad), np.int32)
  positions = np.full((b, p_pad), -1, np.int32)
  for r, x in enumerate(ids):
    tokens[r, p_pad - len(x):] = x
    positions[r, p_pad - len(x):] = np.arange(len(x))
  eos_ids = tuple(lm.config.eos_token_ids) if stop_on_eos else ()
  t0 = time.perf_counter()
  detect = lm.detect_left()
  out, steps, lm.variables = _generate_jit(lm.model, lm.variables, jnp.asarray(tokens), jnp.asarray(positions),
                                           jax.random.PRNGKey(seed), max_new_tokens=max_new_tokens, sc=sampling,
                                           eos_ids=eos_ids, cache_dtype=lm.compute_dtype, detect_calls=detect)
  steps = int(steps)
  lm.calls += steps  # one prefill + (steps - 1) decode calls
  out = np.asarray(out)[:, :steps]
  seconds = time.perf_counter() - t0
  token_ids = []
  for row in out.tolist():
    cut = next((j + 1 for j, t in enumerate(row) if t in eos_ids), len(row))
    token_ids.append(row[:cut])
  texts = [lm.tokenizer.decode(t, skip_special_tokens=True) for t in token_ids]
  return GenerateResult(token_ids, texts, sum(map(len, ids)), sum(map(len, token_ids)), seconds)


def main(argv: Sequence[str] | None = None) -> None:
  from mixq_jax import runtime

  ap = argparse.ArgumentParser(prog="python -m mixq_jax.generate", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  runtime.add_model_args(ap)
  ap.add_argument("--prompt", action="append", required=True,
                  help="prompt text; repeat for a batch of prompts (they may differ in length)")
  ap.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per prompt (default 64)")
  ap.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
  ap.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens; 0 = off")
  ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1.0 = off")
  ap.add_argument("--seed", type=int, default=0, help="PRNG seed for sampling")
  ap.add_argument("--no-stop-on-eos", action="store_true", help="keep generating after an EOS token")
  ap.add_argument("--json", metavar="OUT", help='write {"prompts", "token_ids", "texts"} (generated part) here')
  args = ap.parse_args(argv)
  lm = runtime.load_from_args(args)
  sc = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
  res = generate(lm, args.prompt, max_new_tokens=args.max_new_tokens, sampling=sc, seed=args.seed,
                 stop_on_eos=not args.no_stop_on_eos)
  for prompt, text in zip(args.prompt, res.texts):
    print(f"\n>>> {prompt}\n{text}")
  print(f"\n[{res.new_tokens} new tokens in {res.seconds:.2f}s incl. compilation]", file=sys.stderr)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"prompts": args.prompt, "token_ids": res.token_ids, "texts": res.texts}, f, indent=1)


if __name__ == "__main__":
  main()
