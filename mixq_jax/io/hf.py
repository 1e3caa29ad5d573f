"""Import a HuggingFace checkpoint directory: config.json + safetensors (single file or sharded).

Every tensor named by a shard index must be in the shard it names, exactly once, and every tensor
in a shard must be in the index; names and shapes against the model are checked by the model code.
"""

import collections
import json
import pathlib

import numpy as np
import safetensors

from mixq_jax.io.raw import RawModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def load_hf_dir(path: str | pathlib.Path, dtype: np.dtype | None = np.float32) -> RawModel:
  """Loads config.json and every safetensors tensor of a HF model directory.

  dtype: floating tensors are cast to it (float32 by default; bf16 has no numpy dtype of its
    own); None keeps the stored dtype (bf16 comes back as ml_dtypes.bfloat16).
  """
  path = pathlib.Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"HF model directory {str(path)!r} does not exist")
  hf_config = read_hf_config(path)
  tensors = {}
  for shard, names in _shard_plan(path).items():
    with safetensors.safe_open(shard, framework="np") as f:
      for name in names:
        tensors[name] = _cast(f.get_tensor(name), dtype)
  return RawModel(hf_config=hf_config, tensors=tensors, source=str(path.resolve()))


def read_hf_config(path: str | pathlib.Path) -> dict:
  """The dict in <path>/config.json."""
  config_path = pathlib.Path(path) / CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(f"no {CONFIG_FILE} in HF model directory: {str(config_path)!r} is missing")
  try:
    hf_config = json.loads(config_path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{str(config_path)!r} is not valid JSON: {e}") from e
  if not isinstance(hf_config, dict):
    raise ValueError(f"{str(config_path)!r} must hold a JSON object, got {type(hf_config).__name__}")
  return hf_config


def load_hf_tokenizer(path: str | pathlib.Path):
  """The transformers tokenizer saved in a HF model directory."""
  from transformers import AutoTokenizer  # slow import; only the tokenizer needs it

  path = pathlib.Path(path)
  if not any((path / f).is_file() for f in TOKENIZER_FILES):
    raise FileNotFoundError(f"no tokenizer in {str(path)!r}: none of {TOKENIZER_FILES} exists")
  return AutoTokenizer.from_pretrained(str(path))


def _shard_plan(path: pathlib.Path) -> dict[pathlib.Path, list[str]]:
  """Maps each safetensors file to the tensor names to read from it, after checking the index."""
  index_path = path / INDEX_FILE
  if not index_path.is_file():
    single = path / WEIGHTS_FILE
    if not single.is_file():
      raise FileNotFoundError(
        f"no weights in HF model directory {str(path)!r}: neither {WEIGHTS_FILE} nor {INDEX_FILE} exists"
      )
    with safetensors.safe_open(single, framework="np") as f:
      return {single: list(f.keys())}

  weight_map = _read_weight_map(index_path)
  plan: dict[pathlib.Path, list[str]] = {}
  for name, shard in weight_map.items():
    plan.setdefault(path / shard, []).append(name)
  for shard, names in plan.items():
    if not shard.is_file():
      raise FileNotFoundError(
        f"shard {str(shard)!r} named by {str(index_path)!r} (for {len(names)} tensors, e.g. {names[0]!r}) is missing"
      )
    with safetensors.safe_open(shard, framework="np") as f:
      stored = set(f.keys())
    missing = sorted(set(names) - stored)
    if missing:
      raise ValueError(
        f"{len(missing)} tensors that {INDEX_FILE} places in {shard.name!r} are not in it: {missing[:5]}"
      )
    extra = sorted(stored - set(names))
    if extra:
      where = {n: weight_map[n] for n in extra if n in weight_map}
      raise ValueError(
        f"{len(extra)} tensors in {shard.name!r} are not indexed there by {INDEX_FILE}: "
        f"{extra[:5]}" + (f" (the index places them in {where})" if where else "")
      )
  return plan


def _read_weight_map(index_path: pathlib.Path) -> dict[str, str]:
  """The index's weight_map (tensor name -> shard file name); duplicate names are an error."""

  def no_duplicates(pairs):
    dups = sorted(k for k, n in collections.Counter(k for k, _ in pairs).items() if n > 1)
    if dups:
      raise ValueError(f"{str(index_path)!r} lists tensors more than once: {dups[:5]}")
    return dict(pairs)

  try:
    index = json.loads(index_path.read_text(), object_pairs_hook=no_duplicates)
  except json.JSONDecodeError as e:
    raise ValueError(f"{str(index_path)!r} is not valid JSON: {e}") from e
  weight_map = index.get("weight_map") if isinstance(index, dict) else None
  if not isinstance(weight_map, dict) or not weight_map:
    raise ValueError(f"{str(index_path)!r} has no 'weight_map' object of tensor name -> shard file")
  bad = {k: v for k, v in weight_map.items() if not isinstance(v, str) or pathlib.Path(v).name != v}
  if bad:
    raise ValueError(f"{str(index_path)!r} maps tensors to invalid shard file names: {dict(list(bad.items())[:5])}")
  return weight_map


def _cast(x: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
  # ml_dtypes' bfloat16 is not np.floating; checking for a non-integer, non-bool kind covers it.
  if dtype is None or x.dtype.kind in "biu":
    return x
  return x.astype(dtype, copy=False)
