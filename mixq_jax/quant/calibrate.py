"""Calibration: run the float model on text and collect per-site activation statistics.

For every activation site (the input of q/k/v, o, gate/up, down, head), over all calibration tokens:
per-channel max |x| and mean |x|.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mixq_jax.config import ModelConfig
from mixq_jax.models.transformer import Transformer


def default_calib_path() -> pathlib.Path:
  from mixq_jax.eval.ppl import data_dir

  return data_dir() / "calib" / "c4_sample.jsonl"


def calibration_batches(tokenizer, path: str | os.PathLike | None = None, *, samples: int = 64, seq_len: int = 512
                        ) -> np.ndarray:
  """`samples` windows of `seq_len` tokens [samples, seq_len] from a {"text"} jsonl (documents
  joined with blank lines, cut into consecutive windows)."""
  path = pathlib.Path(path or default_calib_path())
  if not path.exists():
    raise FileNotFoundError(f"calibration data not found: {path} (set --calib-data)")
  if samples < 1 or seq_len < 2:
    raise ValueError(f"calibration needs samples >= 1 and seq_len >= 2, got {samples=} {seq_len=}")
  need = samples * seq_len
  ids: list[int] = []
  with path.open() as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        text = json.loads(line)["text"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}:{n}: expected a JSON object with a 'text' field ({e})") from None
      ids.extend(tokenizer(text + "\n\n")["input_ids"])
      if len(ids) >= need:
        break
  if not ids:
    raise ValueError(f"calibration data {path} is empty")
  if len(ids) < need:
    raise ValueError(f"calibration data {path} has {len(ids)} tokens, fewer than {samples=} x {seq_len=}")
  return np.asarray(ids[:need], np.int32).reshape(samples, seq_len)


@dataclasses.dataclass
class SiteStats:
  absmax: np.ndarray  # [K]
  absmean: np.ndarray  # [K]


def collect_stats(cfg: ModelConfig, params, batches: np.ndarray, *, batch_size: int = 8, dtype=jnp.bfloat16,
                  progress: bool = True) -> dict[str, SiteStats]:
  """Per-site statistics keyed by site path ("layers_3.self_attn.attn_in", "head_in")."""
  model = Transformer(cfg, dtype, calibrate=True)

  @jax.jit
  def run(params, tokens):
    pos = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    _, state = model.apply({"params": params}, tokens, pos, mutable=["calib"])
    return state["calib"]

  absmax: dict[str, np.ndarray] = {}
  abssum: dict[str, np.ndarray] = {}
  count: dict[str, float] = {}
  for s in tqdm(range(0, len(batches), batch_size), desc="calibration", unit="batch", disable=not progress):
    calib = run(params, jnp.asarray(batches[s:s + batch_size]))
    flat = jax.tree_util.tree_flatten_with_path(calib)[0]
    for path, leaf in flat:
      keys = [getattr(p, "key", None) for p in path]
      keys = [k for k in keys if isinstance(k, str)]
      site, stat = ".".join(keys[:-1]), keys[-1]
      v = np.asarray(leaf, np.float64)
      if stat == "absmax":
        absmax[site] = np.maximum(absmax.get(site, 0.0), v)
      elif stat == "abssum":
        abssum[site] = abssum.get(site, 0.0) + v
      else:
        count[site] = count.get(site, 0.0) + float(v)
  return {k: SiteStats(absmax[k].astype(np.float32), (abssum[k] / max(count[k], 1.0)).astype(np.float32))
          for k in absmax}
