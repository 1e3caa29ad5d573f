"""HF safetensors directories: single file, sharded with an index, dtypes, and every error."""

import json

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from mixq_jax.io import llama_tensor_shapes, load_hf_dir
from mixq_jax.io.hf import load_hf_tokenizer
from tests.conftest import asset
from tests.io.tiny_llama import TINY_CONFIG, tiny_tensors, write_hf_dir


def test_stories260k():
  path = asset("models/stories260K")
  raw = load_hf_dir(path)
  assert raw.hf_config == json.loads((path / "config.json").read_text())
  assert raw.source == str(path.resolve())
  # HF's own checkpoint has exactly the names and shapes the GGUF importer checks against.
  assert {k: x.shape for k, x in raw.tensors.items()} == llama_tensor_shapes(raw.hf_config)
  assert all(x.dtype == np.float32 for x in raw.tensors.values())
  assert len(raw.tensors) == 47 and sum(x.size for x in raw.tensors.values()) == 260_032
  tok = load_hf_tokenizer(path)
  ids = tok.encode("Once upon a time")
  assert tok.decode(ids, skip_special_tokens=True) == "Once upon a time" and max(ids) < 512


@pytest.mark.parametrize("shards", [1, 3])
def test_load_round_trip(tmp_path, shards):
  want = tiny_tensors()
  raw = load_hf_dir(write_hf_dir(tmp_path / "m", want, shards=shards))
  assert raw.hf_config == TINY_CONFIG
  assert raw.tensors.keys() == want.keys()
  for name, x in want.items():
    np.testing.assert_array_equal(raw.tensors[name], x, err_msg=name)


@pytest.mark.parametrize("stored", [np.float16, ml_dtypes.bfloat16, np.float32])
def test_dtypes(tmp_path, stored):
  x = np.random.default_rng(0).standard_normal((4, 8)).astype(stored)
  path = write_hf_dir(tmp_path / "m", {"w": x, "step": np.arange(3, dtype=np.int64)})
  raw = load_hf_dir(path)
  assert raw.tensors["w"].dtype == np.float32 and raw.tensors["step"].dtype == np.int64  # ints untouched
  np.testing.assert_array_equal(raw.tensors["w"], x.astype(np.float32))
  assert load_hf_dir(path, dtype=None).tensors["w"].dtype == stored


def _index(path):
  return json.loads((path / "model.safetensors.index.json").read_text())


def _write_index(path, index):
  (path / "model.safetensors.index.json").write_text(json.dumps(index))


def test_missing_dir_config_weights(tmp_path):
  with pytest.raises(FileNotFoundError, match="'.*nowhere' does not exist"):
    load_hf_dir(tmp_path / "nowhere")
  path = write_hf_dir(tmp_path / "m", tiny_tensors())
  (path / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="neither model.safetensors nor model.safetensors.index.json"):
    load_hf_dir(path)
  (path / "config.json").unlink()
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_hf_dir(path)


def test_bad_config(tmp_path):
  path = write_hf_dir(tmp_path / "m", tiny_tensors())
  (path / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match="config.json' is not valid JSON"):
    load_hf_dir(path)


def test_missing_shard(tmp_path):
  path = write_hf_dir(tmp_path / "m", tiny_tensors(), shards=3)
  (path / "model-00002-of-00003.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="shard '.*model-00002-of-00003.safetensors' .* is missing"):
    load_hf_dir(path)


def test_indexed_tensor_missing_from_shard(tmp_path):
  path = write_hf_dir(tmp_path / "m", tiny_tensors(), shards=2)
  index = _index(path)
  index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors"
  _write_index(path, index)
  with pytest.raises(
    ValueError,
    match=r"1 tensors .* in 'model-00001-of-00002.safetensors' are not in it: \['model.layers.9",
  ):
    load_hf_dir(path)


def test_tensor_in_wrong_shard_or_unindexed(tmp_path):
  path = write_hf_dir(tmp_path / "m", tiny_tensors(), shards=2)
  index = _index(path)
  name = next(n for n, f in index["weight_map"].items() if f.startswith("model-00002"))
  index["weight_map"][name] = "model-00001-of-00002.safetensors"
  _write_index(path, index)
  with pytest.raises(ValueError, match="not in it"):
    load_hf_dir(path)
  del index["weight_map"][name]
  _write_index(path, index)
  with pytest.raises(
    ValueError,
    match=f"1 tensors in 'model-00002-of-00002.safetensors' are not indexed there.*{name}",
  ):
    load_hf_dir(path)


def test_duplicate_in_index(tmp_path):
  path = write_hf_dir(tmp_path / "m", tiny_tensors(), shards=2)
  text = (path / "model.safetensors.index.json").read_text()
  dup = '"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors", '
  (path / "model.safetensors.index.json").write_text(text.replace('"weight_map": {', dup))
  with pytest.raises(ValueError, match=r"more than once: \['model.norm.weight'\]"):
    load_hf_dir(path)


def test_duplicate_across_shards(tmp_path):
  # The same name stored in two shards: the index can place it in only one; the other is extra.
  path = write_hf_dir(tmp_path / "m", tiny_tensors(), shards=2)
  save_file({"model.norm.weight": np.ones(64, np.float32)}, path / "model-00003-of-00002.safetensors")
  index = _index(path)
  index["weight_map"]["model.norm.weight"] = "model-00003-of-00002.safetensors"
  _write_index(path, index)
  with pytest.raises(ValueError, match="not indexed there.*model.norm.weight.*the index places them in"):
    load_hf_dir(path)


@pytest.mark.parametrize(
  "text, match",
  [
    ("{oops", "is not valid JSON"),
    ('{"metadata": {}}', "has no 'weight_map'"),
    ('{"weight_map": {"a": "../x.safetensors"}}', "invalid shard file names"),
  ],
)
def test_corrupt_index(tmp_path, text, match):
  path = write_hf_dir(tmp_path / "m", tiny_tensors(), shards=2)
  (path / "model.safetensors.index.json").write_text(text)
  with pytest.raises(ValueError, match=match):
    load_hf_dir(path)


def test_missing_tokenizer(tmp_path):
  with pytest.raises(FileNotFoundError, match="no tokenizer in"):
    load_hf_tokenizer(write_hf_dir(tmp_path / "m", tiny_tensors()))
