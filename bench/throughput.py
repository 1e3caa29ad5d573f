"""End-to-end throughput (issue 6): jitted prefill + KV-cache decode per scheme, against bf16 and a
PyTorch peer, on real model shapes with random weights created on the device.

    python bench/throughput.py --model llama-2-7b --scheme all --batch-size 1,16,64,256 \\
        --prompt-len 128 --decode-len 128 [--ppl-batch 32] [--peer auto|on|off] [--tp N] [--json OUT] [--plots DIR]

--model is a preset of bench/presets.py (llama-2-7b, llama-2-13b, llama-2-70b, llama-3-8b, mistral-7b,
qwen2-7b, falcon-7b, tiny) or a local HF directory / config.json (its shapes, random weights), or
--ckpt DIR for a converted checkpoint (its real weights). --scheme takes names of
mixq_jax.schemes.SCHEMES ("all" = every registered scheme but fp32), so a newly registered scheme is
benchmarked with no change here. Quantized parameters are created directly in their packed form
(int8 values and scales; for outlier schemes an outlier set filled to its capacity with distinct
columns), so a 70B preset never needs a bf16 copy.

Shape letters: B batch, P prompt length, D decode length, S = P + D cache slots.

Protocol: every program is compiled ahead of time (in parallel threads, compilation being the long
part on an unrolled 32..80-layer model), then run once as warm-up, then timed `--reps` times and the
median kept. Prefill = one jitted call: cache allocation + forward over [B, P] + first token. Decode =
one jitted call of D steps (lax.fori_loop over generate.decode_step, greedy, no EOS stop), the cache
donated and fed back. decode tokens/s = B*D / t_decode, prefill tokens/s = B*P / t_prefill.
Memory = device bytes resident for the run (weights, outlier state, KV cache) + the larger compiled
program's XLA temp buffers (`memory_analysis`): the peak of that configuration, estimated per
configuration because the runtime's own peak counter cannot be reset between schemes (it is printed
too). Bandwidth = (weight bytes read per step + KV cache bytes) / decode step time, against a
measured device copy (read + write) bandwidth.

The PPL benchmark (--ppl-batch) times the perplexity forward of mixq_jax.eval.ppl (logits + NLL,
scored in blocks of rows so batch 512 never holds its whole [B, T, V] logits) on WikiText-2 windows
of --ppl-ctx tokens, in windows/s ("it/s"). Presets have no tokenizer, so the text
is tokenized bytewise (UTF-8 byte + 3, a stand-in: the speed of a forward does not depend on which
tokens it reads, and the outlier sets are frozen for timing).

--tp N shards every scheme over N devices (mixq_jax.sharding: Megatron column/row split, KV cache by
kv heads, the Pallas kernels under shard_map). Random weights are then created directly in their
shards, so a preset that does not fit one device never exists whole. Memory is per device (device
0); bandwidth is the aggregate over the N devices, against N times the one-device copy bandwidth.

The peer (--peer, default on when torch sees a GPU): transformers bf16 with its static cache,
`generate(cache_implementation="static")`, same architecture (same config dict), same B/P/D, in a
subprocess run before JAX takes the GPU. Eager PyTorch unless --peer-compile (transformers' own
torch.compile of the decode step, which costs minutes of compilation per shape).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from compile_pool import compile_programs  # noqa: E402

import presets  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from mixq_jax import generate, layers, runtime, schemes, sharding  # noqa: E402
from mixq_jax.config import ModelConfig  # noqa: E402
from mixq_jax.models import common  # noqa: E402
from mixq_jax.models.transformer import Transformer, init_variables, layer_paths  # noqa: E402

DEFAULT_CAPACITY = 128  # outlier slots per site (MixQ upstream)


# ------------------------------------------------------------------------------------------ setup

def parse_list(text: str, conv=int) -> list:
  return [conv(t) for t in text.split(",") if t.strip()]


def resolve_schemes(text: str) -> list[str]:
  """'all' = every registered scheme except fp32, bf16 first (the reference of every ratio)."""
  names = [s for s in schemes.SCHEMES if s != "fp32"] if text == "all" else parse_list(text, str)
  for n in names:
    schemes.get_scheme(n)
  return sorted(dict.fromkeys(names), key=lambda s: s != "bf16")


def make_plan(cfg: ModelConfig, scheme: str, capacity: int) -> schemes.QuantPlan:
  """The scheme on every layer (head bf16). Capacity is clipped to the narrowest site (tiny models),
  since an outlier set cannot hold more columns than its activation has."""
  k_min = min(cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.intermediate_size)
  return schemes.build_plan(layer_paths(cfg), scheme, capacity=min(capacity, k_min))


def fill_outliers(variables: dict, rng: jax.Array) -> dict:
  """Outlier state at capacity (count = C distinct columns, all with stored 16-bit weights), the
  steady state of MixQ after detection; a fresh init holds an empty set, which would time the
  cheap case."""
  if "outliers" not in variables:
    return variables
  sites: dict[tuple, dict] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables["outliers"])[0]:
    sites.setdefault(tuple(path[:-1]), {})[path[-1].key] = leaf
  out: dict = {}
  for i, (site, d) in enumerate(sorted(sites.items(), key=lambda kv: str(kv[0]))):
    c = d["idx"].shape[0]
    k = _site_width(variables["params"], site)
    idx = jax.random.permutation(jax.random.fold_in(rng, i), k)[:c].astype(jnp.int32)
    node = out
    for p in site:
      node = node.setdefault(p.key, {})
    node.update(idx=idx, count=jnp.int32(c), calib_count=jnp.int32(c))
  return {**variables, "outliers": out}


def _site_width(params: dict, site: tuple) -> int:
  """K of the layers that read an outlier site, from their int8 weights [N, K]."""
  node = params
  for p in site[:-1]:  # the module holding the site also holds its layers
    node = node[p.key]
  first = {"attn_in": ("q_proj", "query_key_value"), "o_in": ("o_proj", "dense"),
           "mlp_in": ("gate_proj", "dense_h_to_4h"), "down_in": ("down_proj", "dense_4h_to_h"),
           "head_in": ("lm_head",)}[site[-1].key]
  layer = next(node[n] for n in first if n in node)
  return int(layer["w_q"].shape[1])


def tree_bytes(tree) -> int:
  return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in jax.tree_util.tree_leaves(tree))


def device0_bytes(tree) -> int:
  """Bytes of a tree's arrays held by the first device (all of it without a mesh)."""
  d0 = jax.devices()[0]
  return sum(s.data.nbytes for a in jax.tree_util.tree_leaves(tree) for s in a.addressable_shards if s.device == d0)


def with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def weight_bytes_per_step(cfg: ModelConfig, variables: dict) -> int:
  """Bytes of parameters a decode step reads: all but the embedding table (one row gathered per
  token), unless the head reads it (tied embeddings); mix8's outlier columns from their cache."""
  total = tree_bytes(variables["params"])
  if not cfg.tie_word_embeddings:
    total -= tree_bytes(variables["params"]["embed"])
  if schemes.OUTLIER_COLS in variables:  # mix8 layers read their [N, C] cached columns, not params' w_o
    stored = [a for p, a in jax.tree_util.tree_flatten_with_path(variables["params"])[0] if p[-1].key == "w_o"]
    total += tree_bytes(variables[schemes.OUTLIER_COLS]) - tree_bytes(stored)
  return total


def cache_bytes(cfg: ModelConfig, batch: int, slots: int, dtype=jnp.bfloat16) -> int:
  return 2 * cfg.num_layers * batch * slots * cfg.num_kv_heads * cfg.head_dim * np.dtype(dtype).itemsize


# --------------------------------------------------------------------------------- the programs

def _greedy(logits):  # [B, V] -> [B]
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "slots"))
def prefill_program(model, variables, tokens, positions, *, slots):
  """tokens, positions [B, P] -> (first generated token [B], cache of `slots` slots)."""
  b = tokens.shape[0]
  cache = common.init_cache(model.cfg, b, slots, model.param_dtype, mesh=model.mesh)
  logits, cache, _ = generate.prefill(model, variables, tokens, positions, cache)
  return _greedy(logits), cache


@functools.partial(jax.jit, static_argnames=("model", "steps"), donate_argnames=("cache",))
def decode_program(model, variables, cache, token, position, start, *, steps):
  """`steps` greedy decode steps from token, position [B] written at slot `start` onwards, no EOS
  stop -> (tokens [B, steps], cache)."""
  b = token.shape[0]

  def body(i, state):
    tok, pos, cache, out = state
    logits, cache, _ = generate.decode_step(model, variables, tok, pos, cache, start + i)
    nxt = _greedy(logits)
    return nxt, pos + 1, cache, out.at[:, i].set(nxt)

  out = jnp.zeros((b, steps), jnp.int32)
  _, _, cache, out = jax.lax.fori_loop(0, steps, body, (token, position, cache, out))
  return out, cache


def ppl_program():
  """The perplexity forward of mixq_jax.eval.ppl (jitted there): (model, variables, tokens, detect)."""
  from mixq_jax.eval import ppl

  return ppl._window_nll


def temp_bytes(compiled) -> int:
  try:
    ma = compiled.memory_analysis()
    return int(getattr(ma, "temp_size_in_bytes", 0) or 0)
  except Exception:  # noqa: BLE001 -- some backends have no analysis
    return 0


def time_median(fn, reps: int) -> float:
  """Median seconds of fn() (which blocks), after one warm-up call."""
  fn()
  ts = []
  for _ in range(max(1, reps)):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return statistics.median(ts)


# ------------------------------------------------------------------------------------ device info

def profile_decode(run_decode, out_dir: pathlib.Path, steps: int, log) -> dict[str, Any]:
  """One decode call under the profiler; its per-kernel summary (times per decode step)."""
  import trace_summary

  with jax.profiler.trace(str(out_dir), create_perfetto_trace=True):
    run_decode()
  summ = trace_summary.summarize(out_dir, top=15)
  log(trace_summary.format_summary(summ, per=steps))
  return dict(summ, trace_dir=str(out_dir), steps=steps)


def device_info() -> dict[str, Any]:
  d = jax.devices()[0]
  info = {"device": getattr(d, "device_kind", d.platform), "platform": d.platform, "jax": jax.__version__,
          "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
          "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
  stats = _mem_stats()
  if stats.get("bytes_limit"):
    info["device_memory_bytes"] = int(stats["bytes_limit"])
  return info


def _jaxlib_version() -> str:
  try:
    import jaxlib

    return jaxlib.__version__
  except Exception:  # noqa: BLE001
    return "?"


def _mem_stats() -> dict:
  try:
    return jax.devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001 -- CPU has none
    return {}


def copy_bandwidth(nbytes: int = 1 << 30, reps: int = 10) -> float:
  """Device copy bandwidth in bytes/s (bytes read + written), from a jitted loop of x + 1."""
  n = nbytes // 2
  x = jax.random.normal(jax.random.PRNGKey(0), (n,), jnp.bfloat16)
  loop = jax.jit(lambda x: jax.lax.fori_loop(0, reps, lambda i, y: y + jnp.bfloat16(1), x))
  t = time_median(lambda: loop(x).block_until_ready(), 5)
  return 2 * n * 2 * reps / t


# --------------------------------------------------------------------------------- the benchmark

def random_variables(cfg: ModelConfig, scheme: str, capacity: int, seed: int, mesh=None) -> dict:
  """Random variables of the scheme's stored form, made leaf by leaf on the device.

  The layout comes from `init_variables` traced abstractly (no device work); each leaf is then
  filled by a small jitted generator per (shape, dtype, kind), so a 32..80-layer model costs a
  handful of tiny compilations instead of one of the whole `model.init` (minutes at 7B on a GPU),
  and never holds a float copy of an int8 weight. With a mesh each leaf is generated directly in
  its shards (the generator's out_shardings), so the whole model never sits on one device."""
  plan = make_plan(cfg, scheme, capacity)
  dtype = jnp.float32 if scheme == "fp32" else jnp.bfloat16
  shapes = jax.eval_shape(lambda: init_variables(cfg, jax.random.PRNGKey(0), dtype, plan))
  key = jax.random.PRNGKey(seed)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  places = [None] * len(leaves) if mesh is None else jax.tree_util.tree_leaves(sharding.variable_shardings(shapes, mesh))
  filled = [_filler(place)(jax.random.fold_in(key, i), a.shape, a.dtype, _leaf_kind(path, a))
            for i, ((path, a), place) in enumerate(zip(leaves, places))]
  variables = fill_outliers(jax.tree_util.tree_unflatten(treedef, filled), jax.random.fold_in(key, len(leaves)))
  variables = layers.with_outlier_cache(variables, plan)  # as runtime.load builds it for a checkpoint
  return variables if mesh is None else sharding.shard_variables(variables, mesh)  # places the outlier state


def _leaf_kind(path, a) -> str:
  name = path[-1].key
  if path[0].key == "outliers" or name == "bias":
    return "zeros"
  if name == "w_q":
    return "int8"
  if name == "s_w":
    return "scale"
  if name == "smooth_inv" or (name == "weight" and len(a.shape) == 1):  # norms, SmoothQuant 1/s
    return "ones"
  return "normal"  # embed, 16-bit weights, mix8 w_o


@functools.lru_cache(maxsize=None)
def _filler(place):
  """The jitted leaf generator, its output placed as `place` (a NamedSharding, or None: default device)."""
  kw = {} if place is None else {"out_shardings": place}
  return jax.jit(_fill, static_argnames=("shape", "dtype", "kind"), **kw)


def _fill(key, shape, dtype, kind):
  if kind == "int8":  # uniform over the int8 range, no int32 intermediate
    return jax.lax.bitcast_convert_type(jax.random.bits(key, shape, jnp.uint8), jnp.int8)
  if kind == "scale":  # per-channel scales of weights with max |W| ~ 0.02..0.04
    return ((0.02 / 127) * (1.0 + jax.random.uniform(key, shape, jnp.float32))).astype(dtype)
  if kind == "ones":
    return jnp.ones(shape, dtype)
  if kind == "zeros":
    return jnp.zeros(shape, dtype)
  return (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def benchmark(cfg: ModelConfig, scheme_names: list[str], batches: list[int], prompt_lens: list[int],
              decode_len: int, *, ppl_batches: Sequence[int] = (), ppl_ctx: int = 512, ppl_tokens=None,
              capacity: int = DEFAULT_CAPACITY, impl: str = "auto", reps: int = 3, workers: int = 8,
              loaded=None, log=print, on_record=None, tp: int = 1, profile_dir=None) -> list[dict]:
  """Runs every scheme x batch x prompt length (decode + prefill) and every scheme x ppl batch and
  returns one record per configuration. `loaded` (a runtime.LoadedModel) replaces the random
  weights and the plan by a checkpoint's own (scheme_names then names its one scheme; with tp > 1
  it must already be sharded, runtime.load(tp=...)). tp > 1 shards over that many devices.
  profile_dir: after timing, one more decode call per configuration runs under jax.profiler.trace
  into profile_dir/{scheme}_B{b}_P{p}, and its per-kernel table (trace_summary) is logged and kept in
  the record as "profile"."""
  impl = runtime.resolve_impl(impl)
  limit = _mem_stats().get("bytes_limit")
  mesh = None
  if tp > 1:
    sharding.check_divisible(cfg, tp)
    mesh = loaded.model.mesh if loaded is not None else sharding.make_mesh(tp)
  rep = None if mesh is None else NamedSharding(mesh, PartitionSpec())
  put = (lambda x: x) if mesh is None else (lambda x: jax.device_put(x, rep))  # noqa: E731
  if loaded is not None:
    models = {s: loaded.model for s in scheme_names}
    make_vars = lambda s: loaded.variables  # noqa: E731
  else:
    models = {s: Transformer(cfg, jnp.float32 if s == "fp32" else jnp.bfloat16, impl, make_plan(cfg, s, capacity),
                             mesh=mesh)
              for s in scheme_names}
    make_vars = lambda s: random_variables(cfg, s, capacity, seed=0, mesh=mesh)  # noqa: E731
  abstract_vars = {s: jax.eval_shape(lambda s=s: make_vars(s)) for s in scheme_names}
  if mesh is not None:  # compiled programs take exactly these placements
    abstract_vars = {s: with_shardings(av, sharding.variable_shardings(av, mesh)) for s, av in abstract_vars.items()}

  def abstract(shape, dtype=jnp.int32):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=rep)

  def abstract_cache(b, slots, dtype):
    c = jax.eval_shape(lambda: common.init_cache(cfg, b, slots, dtype))
    return c if mesh is None else with_shardings(c, sharding.cache_shardings(cfg.num_kv_heads, c, mesh))

  jobs: dict[Any, Any] = {}
  for s in scheme_names:
    m, av = models[s], abstract_vars[s]
    for b in batches:
      for p in prompt_lens:
        slots = p + decode_len
        tok = abstract((b, p))
        jobs[("prefill", s, b, p)] = functools.partial(prefill_program.lower, m, av, tok, tok, slots=slots)
        cache = abstract_cache(b, slots, m.param_dtype)
        vec = abstract((b,))
        jobs[("decode", s, b, p)] = functools.partial(decode_program.lower, m, av, cache, vec, vec, abstract(()),
                                                      steps=decode_len)
    for b in ppl_batches:
      tok = abstract((b, ppl_ctx))
      jobs[("ppl", s, b, ppl_ctx)] = functools.partial(ppl_program().lower, m, av, tok, detect=False)
  log(f"compiling {len(jobs)} programs ({workers} threads) ...")
  t0 = time.perf_counter()
  compiled = compile_programs(jobs, workers, log)
  log(f"compiled in {time.perf_counter() - t0:.1f}s")

  records: list[dict] = []
  rng = np.random.default_rng(0)

  def emit(rec):
    records.append(rec)
    if on_record:
      on_record(rec)

  for s in scheme_names:
    t0 = time.perf_counter()
    variables = make_vars(s)
    jax.block_until_ready(variables)
    resident = device0_bytes(variables)  # per device (all of it without a mesh)
    w_step = weight_bytes_per_step(cfg, variables)
    log(f"[{s}] weights {resident / 1e9:.2f} GB created in {time.perf_counter() - t0:.1f}s")
    for p in prompt_lens:
      for b in batches:
        rec = dict(scheme=s, batch=b, prompt_len=p, decode_len=decode_len, decode_tok_s=None, prefill_tok_s=None,
                   peak_mem_bytes=None, speedup_vs_bf16=None, prefill_speedup_vs_bf16=None, weight_bytes=w_step,
                   kv_bytes=cache_bytes(cfg, b, p + decode_len, models[s].param_dtype), tp=tp, status="ok")
        cp, cd = compiled[("prefill", s, b, p)], compiled[("decode", s, b, p)]
        err = next((c for c in (cp, cd) if isinstance(c, Exception)), None)
        if err is not None:
          rec["status"] = f"compile failed: {type(err).__name__}: {str(err)[:200]}"
          emit(rec)
          continue
        kv_split = mesh is not None and cfg.num_kv_heads % tp == 0
        peak = resident + rec["kv_bytes"] // (tp if kv_split else 1) + max(temp_bytes(cp), temp_bytes(cd))
        rec["peak_mem_bytes"] = peak
        if limit and peak > limit:
          rec["status"] = f"skipped: needs ~{peak / 1e9:.1f} GB of {limit / 1e9:.1f} GB"
          emit(rec)
          log(f"[{s}] B={b} P={p}: {rec['status']}")
          continue
        try:
          tokens = put(jnp.asarray(rng.integers(0, cfg.vocab_size, (b, p)), jnp.int32))
          positions = put(jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p)))
          t_pre = time_median(lambda: jax.block_until_ready(cp(variables, tokens, positions)), reps)
          first, cache = cp(variables, tokens, positions)
          first = put(first)
          if mesh is not None:
            cache = jax.device_put(cache, sharding.cache_shardings(cfg.num_kv_heads, cache, mesh))
          state = {"cache": cache}
          pos = put(jnp.full((b,), p, jnp.int32))
          start = put(jnp.int32(p))

          def run_decode():
            out, state["cache"] = cd(variables, state["cache"], first, pos, start)
            out.block_until_ready()

          t_dec = time_median(run_decode, reps)
          if profile_dir:
            rec["profile"] = profile_decode(run_decode, pathlib.Path(profile_dir) / f"{s}_B{b}_P{p}", decode_len, log)
          del state, cache, first
        except Exception as e:  # noqa: BLE001 -- e.g. out of memory: record and go on
          rec["status"] = f"failed: {type(e).__name__}: {str(e)[:200]}"
          emit(rec)
          log(f"[{s}] B={b} P={p}: {rec['status']}")
          gc.collect()
          continue
        rec.update(decode_tok_s=b * decode_len / t_dec, prefill_tok_s=b * p / t_pre,
                   decode_step_s=t_dec / decode_len, prefill_s=t_pre,
                   decode_bw_bytes_s=(w_step + rec["kv_bytes"]) * decode_len / t_dec)
        emit(rec)
        log(f"[{s}] B={b} P={p}: decode {rec['decode_tok_s']:.1f} tok/s ({1e3 * t_dec / decode_len:.2f} ms/step), "
            f"prefill {rec['prefill_tok_s']:.0f} tok/s")
    for b in ppl_batches:
      rec = dict(scheme=s, kind="ppl", batch=b, n_ctx=ppl_ctx, it_s=None, tok_s=None, speedup_vs_bf16=None,
                 tp=tp, status="ok")
      c = compiled[("ppl", s, b, ppl_ctx)]
      if isinstance(c, Exception):
        rec["status"] = f"compile failed: {type(c).__name__}: {str(c)[:200]}"
        emit(rec)
        continue
      peak = resident + temp_bytes(c)
      rec["peak_mem_bytes"] = peak
      if limit and peak > limit:
        rec["status"] = f"skipped: needs ~{peak / 1e9:.1f} GB of {limit / 1e9:.1f} GB"
        emit(rec)
        log(f"[{s}] ppl B={b}: {rec['status']}")
        continue
      windows = put(_ppl_windows(ppl_tokens, b, ppl_ctx, cfg.vocab_size, rng))
      try:
        t = time_median(lambda: jax.block_until_ready(c(variables, windows)), reps)
      except Exception as e:  # noqa: BLE001
        rec["status"] = f"failed: {type(e).__name__}: {str(e)[:200]}"
        emit(rec)
        continue
      rec.update(it_s=1.0 / t, tok_s=b * ppl_ctx / t)
      emit(rec)
      log(f"[{s}] ppl B={b} n_ctx={ppl_ctx}: {rec['it_s']:.2f} it/s ({rec['tok_s']:.0f} tok/s)")
    del variables
    gc.collect()
  add_ratios(records)
  return records


def _ppl_windows(ids, b: int, n_ctx: int, vocab: int, rng) -> jax.Array:
  """[B, n_ctx] int32: consecutive windows of the text's tokens (random tokens if none given)."""
  if ids is None or len(ids) < n_ctx:
    return jnp.asarray(rng.integers(0, vocab, (b, n_ctx)), jnp.int32)
  n = len(ids) // n_ctx
  w = np.asarray(ids[: n * n_ctx], np.int64).reshape(n, n_ctx) % vocab
  return jnp.asarray(np.resize(w, (b, n_ctx)), jnp.int32)


def wikitext_ids(path, tokenizer=None) -> np.ndarray | None:
  """Token ids of WikiText-2 test (GPTQ protocol text), bytewise when there is no tokenizer."""
  from mixq_jax.eval import ppl

  try:
    text = ppl.read_text(path or ppl.default_wikitext())
  except FileNotFoundError:
    return None
  if tokenizer is not None:
    return np.asarray(tokenizer(text)["input_ids"], np.int64)
  return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int64) + 3


def add_ratios(records: list[dict]) -> None:
  """speedup_vs_bf16 (decode, or it/s for ppl records) and prefill_speedup_vs_bf16 against the
  bf16 record of the same shape measured in the same run."""
  def key(r):
    return (r.get("kind", "gen"), r["batch"], r.get("prompt_len"), r.get("n_ctx"))

  base = {key(r): r for r in records if r["scheme"] == "bf16" and r["status"] == "ok"}
  for r in records:
    ref = base.get(key(r))
    if ref is None or r["status"] != "ok":
      continue
    if r.get("kind") == "ppl":
      r["speedup_vs_bf16"] = r["it_s"] / ref["it_s"]
    else:
      r["speedup_vs_bf16"] = r["decode_tok_s"] / ref["decode_tok_s"]
      r["prefill_speedup_vs_bf16"] = r["prefill_tok_s"] / ref["prefill_tok_s"]


# --------------------------------------------------------------------------------- PyTorch peer

def torch_gpu_available() -> bool:
  """Whether torch sees a CUDA GPU, asked in a subprocess (CUDA must stay free for JAX here)."""
  try:
    r = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                       capture_output=True, text=True, timeout=120)
  except Exception:  # noqa: BLE001
    return False
  return r.stdout.strip().endswith("True")


def run_peer(hf_cfg: dict, batches, prompt_lens, decode_len: int, *, reps: int, compile_: bool, log) -> list[dict]:
  """Runs `torch_peer` in a subprocess (before JAX takes the GPU) and returns its records."""
  with tempfile.TemporaryDirectory() as d:
    spec = pathlib.Path(d) / "spec.json"
    out = pathlib.Path(d) / "out.json"
    spec.write_text(json.dumps(dict(hf=hf_cfg, batches=batches, prompt_lens=prompt_lens, decode_len=decode_len,
                                    reps=reps, compile=compile_)))
    r = subprocess.run([sys.executable, __file__, PEER_FLAG, str(spec), str(out)], text=True)
    if r.returncode or not out.exists():
      log(f"peer failed (exit {r.returncode})")
      return []
    return json.loads(out.read_text())


def torch_peer(spec: dict) -> list[dict]:
  """transformers bf16 on the GPU with a static cache: prefill = generate 1 token, decode = the
  difference to generating D tokens (min_new_tokens = D, so no EOS stop)."""
  import torch
  import transformers

  hf = dict(spec["hf"])
  cfg = transformers.AutoConfig.for_model(hf.pop("model_type"), **hf)
  dev = spec.get("device", "cuda")
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
  torch.manual_seed(0)
  with torch.device(dev):
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
  d = spec["decode_len"]
  out = []

  def gen(ids, n):
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
      model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                     do_sample=False, cache_implementation="static", pad_token_id=0,
                     disable_compile=not spec["compile"])
    sync()
    return time.perf_counter() - t0

  for p in spec["prompt_lens"]:
    for b in spec["batches"]:
      rec = dict(scheme="torch-bf16", batch=b, prompt_len=p, decode_len=d, decode_tok_s=None, prefill_tok_s=None,
                 peak_mem_bytes=None, speedup_vs_bf16=None, status="ok")
      try:
        ids = torch.randint(0, cfg.vocab_size, (b, p), device=dev)
        if dev == "cuda":
          torch.cuda.reset_peak_memory_stats()
        gen(ids, 2)  # warm-up (cache allocation, kernels)
        t1 = statistics.median(gen(ids, 1) for _ in range(spec["reps"]))
        tn = statistics.median(gen(ids, d) for _ in range(max(1, spec["reps"] - 1)))
        rec.update(prefill_tok_s=b * p / t1, decode_tok_s=b * (d - 1) / max(tn - t1, 1e-9),
                   peak_mem_bytes=int(torch.cuda.max_memory_allocated()) if dev == "cuda" else None, prefill_s=t1,
                   decode_step_s=(tn - t1) / (d - 1))
        print(f"[torch-bf16] B={b} P={p}: decode {rec['decode_tok_s']:.1f} tok/s, prefill {rec['prefill_tok_s']:.0f}"
              f" tok/s", flush=True)
      except Exception as e:  # noqa: BLE001 -- e.g. out of memory
        rec["status"] = f"failed: {type(e).__name__}: {str(e)[:200]}"
        print(f"[torch-bf16] B={b} P={p}: {rec['status']}", flush=True)
        if dev == "cuda":
          torch.cuda.empty_cache()
      out.append(rec)
  return out


def add_peer_ratios(records: list[dict]) -> None:
  """bf16_vs_torch on JAX bf16 records: JAX decode tokens/s over the peer's."""
  peer = {(r["batch"], r["prompt_len"]): r for r in records if r["scheme"] == "torch-bf16" and r["status"] == "ok"}
  for r in records:
    if r["scheme"] == "bf16" and r.get("kind") != "ppl" and r["status"] == "ok":
      q = peer.get((r["batch"], r["prompt_len"]))
      if q:
        r["decode_vs_torch"] = r["decode_tok_s"] / q["decode_tok_s"]
        r["prefill_vs_torch"] = r["prefill_tok_s"] / q["prefill_tok_s"]


# ---------------------------------------------------------------------------------------- output

def _f(v, fmt="{:.1f}"):
  return "-" if v is None else fmt.format(v)


def _mem(n):
  if not n:
    return "-"
  return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def format_tables(records: list[dict], info: dict) -> str:
  """Markdown: one generation table per scheme (upstream MixQ columns + ratios), then the PPL table."""
  bw = info.get("copy_bw_bytes_s")
  if bw:
    bw *= info.get("tp", 1)  # aggregate bandwidth of the devices the model is split over
  lines = []
  gen = [r for r in records if r.get("kind") != "ppl"]
  for s in dict.fromkeys(r["scheme"] for r in gen):
    lines += [f"\n**{s}**\n",
              "| Batch Size | Prompt | Decode Length | Decode tokens/s | Prefill tokens/s | Memory (peak device) "
              "| decode x bf16 | prefill x bf16 | weight+KV GB/s | % of copy BW | status |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in (r for r in gen if r["scheme"] == s):
      bwr = r.get("decode_bw_bytes_s")
      lines.append(
          f"| {r['batch']} | {r['prompt_len']} | {r['decode_len']} | {_f(r['decode_tok_s'])} | "
          f"{_f(r['prefill_tok_s'], '{:.0f}')} | {_mem(r['peak_mem_bytes'])} | "
          f"{_f(r.get('speedup_vs_bf16'), '{:.2f}x')} | {_f(r.get('prefill_speedup_vs_bf16'), '{:.2f}x')} | "
          f"{_f(bwr and bwr / 1e9, '{:.0f}')} | {_f(bwr and bw and 100 * bwr / bw, '{:.0f}%')} | {r['status']} |")
  peer = [r for r in gen if r["scheme"] == "bf16" and "decode_vs_torch" in r]
  if peer:
    lines += ["\n**JAX bf16 vs transformers bf16 (static cache)**\n",
              "| Batch Size | Prompt | decode JAX/torch | prefill JAX/torch |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {r['prompt_len']} | {r['decode_vs_torch']:.2f}x | {r['prefill_vs_torch']:.2f}x |"
              for r in peer]
  ppl = [r for r in records if r.get("kind") == "ppl"]
  if ppl:
    lines += [f"\n**Perplexity forward, WikiText-2 windows (n_ctx {ppl[0]['n_ctx']})**\n",
              "| scheme | batch | it/s | tokens/s | x bf16 | Memory (peak device) | status |",
              "|---|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['scheme']} | {r['batch']} | {_f(r['it_s'], '{:.2f}')} | {_f(r['tok_s'], '{:.0f}')} | "
              f"{_f(r['speedup_vs_bf16'], '{:.2f}x')} | "
              f"{_mem(r.get('peak_mem_bytes'))} | {r['status']} |"
              for r in ppl]
  return "\n".join(lines)


def header(info: dict, model: str, impl: str) -> str:
  bw = info.get("copy_bw_bytes_s")
  tp = info.get("tp", 1)
  return (f"model {model} | device {info['device']}" + (f" x {tp} (tensor parallel)" if tp > 1 else "") +
          f" | jax {info['jax']} (jaxlib {info['jaxlib']}) | impl {impl} | "
          f"{info['date']}" + (f" | copy bandwidth {bw / 1e9:.0f} GB/s per device" if bw else ""))


PEER_FLAG = "--_peer"  # internal: `throughput.py --_peer SPEC.json OUT.json` runs torch_peer


def main(argv: Sequence[str] | None = None) -> list[dict]:
  argv = list(sys.argv[1:] if argv is None else argv)
  # JAX takes 75% of the GPU at its first use by default; the batch-256 KV caches need more.
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
  if argv[:1] == [PEER_FLAG]:
    spec = json.loads(pathlib.Path(argv[1]).read_text())
    pathlib.Path(argv[2]).write_text(json.dumps(torch_peer(spec)))
    return []
  ap = argparse.ArgumentParser(prog="python bench/throughput.py", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--model", help="preset name or local HF directory / config.json (random weights of its shape)")
  src.add_argument("--ckpt", metavar="DIR", help="a converted checkpoint (its own weights and scheme)")
  ap.add_argument("--scheme", default="all", help="comma-separated schemes, or 'all' (default): every registered "
                                                  "scheme but fp32; ratios are against bf16 of the same run")
  ap.add_argument("--batch-size", default="1,16,64,256", help="comma-separated batch sizes (default 1,16,64,256)")
  ap.add_argument("--prompt-len", default="128", help="comma-separated prompt lengths (default 128)")
  ap.add_argument("--decode-len", type=int, default=128, help="decode steps timed (default 128)")
  ap.add_argument("--ppl-batch", default="", help="comma-separated batches for the perplexity-forward benchmark "
                                                  "(e.g. 32,512); empty = off")
  ap.add_argument("--ppl-ctx", type=int, default=512, help="perplexity window length (default 512)")
  ap.add_argument("--data", default=None, help="perplexity text (default: WikiText-2 test in $MIXQ_DATA_DIR)")
  ap.add_argument("--capacity", type=int, default=DEFAULT_CAPACITY, help="outlier slots per site (default 128)")
  ap.add_argument("--impl", default="auto", choices=runtime.IMPLS, help="how quantized layers run (default auto)")
  ap.add_argument("--tp", type=int, default=1,
                  help="tensor-parallel degree: shard every scheme over this many devices (default 1; memory is "
                       "then per device, bandwidth the aggregate)")
  ap.add_argument("--reps", type=int, default=3, help="timed repetitions after the warm-up (median kept)")
  ap.add_argument("--compile-workers", type=int, default=min(8, os.cpu_count() or 1),
                  help="threads compiling programs in parallel")
  ap.add_argument("--peer", choices=("auto", "on", "off"), default="auto",
                  help="transformers bf16 peer: auto = when torch sees a GPU (default)")
  ap.add_argument("--peer-compile", action="store_true", help="let transformers torch.compile the peer's decode")
  ap.add_argument("--json", metavar="OUT", help="write the records (one per scheme x batch x prompt) here")
  ap.add_argument("--plots", metavar="DIR", help="write PNG plots here (needs matplotlib)")
  ap.add_argument("--profile", metavar="DIR",
                  help="after timing, trace one more decode call per configuration with jax.profiler into "
                       "DIR/SCHEME_B{b}_P{p} (TensorBoard / Perfetto) and print its per-kernel table: device "
                       "time per decode step by kernel name, and the idle time between kernels")
  ap.add_argument("--accuracy", action="append", default=[], metavar="SCHEME=PPL_JSON",
                  help="perplexity JSON of `python -m mixq_jax.eval.ppl --json` for a scheme, for the "
                       "perplexity-vs-speed plot (repeatable)")
  args = ap.parse_args(argv)

  log = functools.partial(print, flush=True)
  batches, prompt_lens = parse_list(args.batch_size), parse_list(args.prompt_len)
  ppl_batches = parse_list(args.ppl_batch)
  for name, vals in (("batch-size", batches), ("prompt-len", prompt_lens), ("ppl-batch", ppl_batches)):
    if any(v < 1 for v in vals):
      raise SystemExit(f"--{name} values must be >= 1, got {vals}")
  if args.decode_len < 1:
    raise SystemExit(f"--decode-len={args.decode_len} must be >= 1")
  if not 1 <= args.tp <= len(jax.devices()):
    raise SystemExit(f"--tp {args.tp} needs that many devices; this machine has {len(jax.devices())}")

  lm, tokenizer, hf_cfg = None, None, None
  if args.ckpt:
    lm = runtime.load(ckpt=args.ckpt, impl=args.impl, tp=args.tp)
    cfg, scheme_names, tokenizer = lm.config, [lm.quant.get("scheme", "bf16")], lm.tokenizer
    model_name = args.ckpt
    log(f"checkpoint {args.ckpt}: scheme {scheme_names[0]} (only this scheme is timed)")
  else:
    cfg = presets.model_config(args.model)
    scheme_names = resolve_schemes(args.scheme)
    if "bf16" not in scheme_names:
      log("note: bf16 not among the schemes: no x bf16 ratios in this run")
    model_name = args.model
    hf_cfg = presets.hf_config(args.model) if presets.is_preset(args.model) else json.loads(
        (pathlib.Path(args.model) / "config.json" if pathlib.Path(args.model).is_dir()
         else pathlib.Path(args.model)).read_text())
  max_slots = max(prompt_lens) + args.decode_len
  if max_slots > cfg.max_position_embeddings:
    log(f"warning: {max_slots=} exceeds max_position_embeddings={cfg.max_position_embeddings}")

  peer_records: list[dict] = []
  want_peer = args.peer == "on" or (args.peer == "auto" and hf_cfg is not None and args.tp == 1
                                     and torch_gpu_available())
  if want_peer and hf_cfg is not None:
    log("running the transformers peer (subprocess) ...")
    peer_records = run_peer(hf_cfg, batches, prompt_lens, args.decode_len, reps=args.reps,
                            compile_=args.peer_compile, log=log)

  info = device_info()
  info["tp"] = args.tp
  info["copy_bw_bytes_s"] = copy_bandwidth(nbytes=(1 << 30) if info["platform"] == "gpu" else (1 << 24))
  impl = runtime.resolve_impl(args.impl)
  log(header(info, model_name, impl))
  ids = wikitext_ids(args.data, tokenizer) if ppl_batches else None
  out_path = pathlib.Path(args.json) if args.json else None
  if out_path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
  partial: list[dict] = list(peer_records)

  def on_record(rec):  # keep what is done if a long run is cut short
    partial.append(rec)
    add_ratios(partial)
    add_peer_ratios(partial)
    if out_path:
      out_path.write_text(json.dumps({"info": info, "model": model_name, "records": partial}, indent=1))

  records = benchmark(cfg, scheme_names, batches, prompt_lens, args.decode_len, ppl_batches=ppl_batches,
                      ppl_ctx=args.ppl_ctx, ppl_tokens=ids, capacity=args.capacity, impl=args.impl, reps=args.reps,
                      workers=args.compile_workers, loaded=lm, log=log, on_record=on_record, tp=args.tp,
                      profile_dir=args.profile)
  records = records + peer_records
  add_ratios(records)
  add_peer_ratios(records)
  info["process_peak_bytes"] = _mem_stats().get("peak_bytes_in_use")
  print("\n" + header(info, model_name, impl))
  print(format_tables(records, info))
  if out_path:
    out_path.write_text(json.dumps({"info": info, "model": model_name, "records": records}, indent=1))
    log(f"\nwrote {out_path}")
  if args.plots:
    try:
      import plots
    except ImportError as e:
      log(f"no plots ({e})")
    else:
      acc = dict(a.split("=", 1) for a in args.accuracy)
      for p in plots.write_all(records, pathlib.Path(args.plots), title=model_name, accuracy=acc):
        log(f"wrote {p}")
  return records


if __name__ == "__main__":
  main()
