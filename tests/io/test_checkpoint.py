"""Orbax checkpoints: bit-exact round trips, atomic writes, and a clear error for every bad load."""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import asset
from mixq_jax.io import checkpoint as ckpt
from mixq_jax.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

CONFIG = {"model_type": "llama", "hidden_size": 64, "rope_theta": 10000.0, "tie": False}
QUANT = {"scheme": "mix8", "rules": [{"match": "down_proj", "w_bits": 8}], "outlier_capacity": 128}


def _params(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {
      "embed": jnp.asarray(rng.standard_normal((16, 8)), jnp.bfloat16),
      "layers": {
          "0": {
              "q_proj": {
                  "qvalue": rng.integers(-128, 128, (8, 8), dtype=np.int8),  # numpy leaf
                  "scale": jnp.asarray(rng.random(8) + 0.5, jnp.float32),
                  "packed": jnp.asarray(rng.integers(0, 256, (8, 4)), jnp.uint8),
                  "outlier_idx": jnp.asarray(rng.permutation(8)[:3], jnp.int32),
                  "outlier_count": jnp.asarray(3, jnp.int32),  # 0-d
              },
              "extra": {},  # empty dict must survive
          },
      },
      "norm.weight": jnp.asarray(rng.standard_normal(8), jnp.float32),  # dotted key ...
      "norm": {"weight": jnp.asarray(rng.standard_normal(8), jnp.bfloat16)},  # ... that collides
      "empty_rows": np.zeros((0, 8), np.float32),  # zero-size: Orbax cannot store it
      "int4": jnp.asarray(rng.integers(-8, 8, 6), jnp.int4),
      "nan_inf": jnp.asarray([np.nan, np.inf, -0.0, 1e-40], jnp.float32),  # bit-exact, incl. NaN
  }


def _assert_same_tree(got, want, where="params"):
  assert isinstance(got, dict), f"{where}: {type(got)}"
  assert sorted(got) == sorted(want), where
  for k in want:
    if isinstance(want[k], dict):
      _assert_same_tree(got[k], want[k], f"{where}/{k}")
      continue
    g = got[k]
    assert isinstance(g, jax.Array), f"{where}/{k}: {type(g)}"
    assert g.dtype == want[k].dtype and g.shape == want[k].shape, f"{where}/{k}"
    assert np.asarray(g).tobytes() == np.asarray(want[k]).tobytes(), f"{where}/{k} differs"


def _save(path, seed=0, **kw):
  return save_checkpoint(path, _params(seed), config=CONFIG, quant=QUANT, **kw)


def _params_file(path: pathlib.Path) -> pathlib.Path:
  """The largest file under params/: the one that holds the array bytes."""
  files = [p for p in (path / "params").rglob("*") if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


def test_round_trip_is_bit_exact(tmp_path):
  out = _save(tmp_path / "ck")
  assert out == tmp_path / "ck"
  loaded = load_checkpoint(out)
  _assert_same_tree(loaded.params, _params())
  assert loaded.config == CONFIG and loaded.quant == QUANT
  assert loaded.format_version == ckpt.FORMAT_VERSION == 1
  assert loaded.path == out
  names = sorted(p.name for p in out.iterdir())
  assert names == ["config.json", "mixq_checkpoint.json", "params", "quant.json"]
  assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temp dir left behind


def test_round_trip_edge_trees(tmp_path):
  trees = [{}, {"a": {}}, {"only_empty": np.zeros((0,), np.uint8)}, {"s": jnp.float32(2.5)}]
  for i, params in enumerate(trees):
    loaded = load_checkpoint(save_checkpoint(tmp_path / f"ck{i}", params, config={}, quant={}))
    _assert_same_tree(loaded.params, params)


def test_tokenizer_round_trip(tmp_path):
  tok_dir = asset("models/stories260K")  # before the slow transformers import, so a skip is cheap
  import transformers

  tok = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
  out = _save(tmp_path / "ck", tokenizer=tok)
  got = ckpt.load_checkpoint_tokenizer(out)
  text = "Once upon a time, there was a little cat."
  assert got.encode(text) == tok.encode(text)
  assert ckpt.load_checkpoint_tokenizer(_save(tmp_path / "no_tok")) is None
  load_checkpoint(out)  # tokenizer files are covered by the manifest's hashes too
  victim = next(p for p in (out / "tokenizer").iterdir() if p.suffix == ".json")
  victim.write_text(victim.read_text().replace("a", "b", 1))
  with pytest.raises(CheckpointError, match=f"tokenizer/{victim.name}"):
    ckpt.load_checkpoint_tokenizer(out)


def test_missing_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    load_checkpoint(tmp_path / "nope")


def test_missing_manifest_is_incomplete(tmp_path):
  out = _save(tmp_path / "ck")
  (out / ckpt.MANIFEST).unlink()
  with pytest.raises(CheckpointError, match="incomplete"):
    load_checkpoint(out)


def test_wrong_format_version(tmp_path):
  out = _save(tmp_path / "ck")
  manifest = json.loads((out / ckpt.MANIFEST).read_text())
  manifest["format_version"] = 2
  (out / ckpt.MANIFEST).write_text(json.dumps(manifest))
  with pytest.raises(CheckpointError, match="format_version=2.*format_version=1"):
    load_checkpoint(out)


@pytest.mark.parametrize("item", ["config.json", "quant.json", "params"])
def test_missing_item(tmp_path, item):
  out = _save(tmp_path / "ck")
  victim = out / item
  if victim.is_dir():
    import shutil

    shutil.rmtree(victim)
  else:
    victim.unlink()
  with pytest.raises(CheckpointError, match=f"item '{item}' is missing"):
    load_checkpoint(out)


def test_corrupt_params_file(tmp_path):
  out = _save(tmp_path / "ck")
  victim = _params_file(out)
  data = bytearray(victim.read_bytes())
  data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
  victim.write_bytes(bytes(data))
  rel = victim.relative_to(out).as_posix()
  with pytest.raises(CheckpointError, match=f"{rel} is corrupt"):
    load_checkpoint(out)


def test_truncated_params_file(tmp_path):
  out = _save(tmp_path / "ck")
  victim = _params_file(out)
  victim.write_bytes(victim.read_bytes()[:-10])
  with pytest.raises(CheckpointError, match=f"{victim.relative_to(out).as_posix()} is .* bytes"):
    load_checkpoint(out)


def test_deleted_params_file(tmp_path):
  out = _save(tmp_path / "ck")
  victim = _params_file(out)
  victim.unlink()
  with pytest.raises(CheckpointError, match=f"{victim.relative_to(out).as_posix()} is missing"):
    load_checkpoint(out)


def test_no_overwrite_without_asking(tmp_path):
  out = _save(tmp_path / "ck", seed=0)
  with pytest.raises(FileExistsError, match="--overwrite"):
    _save(out, seed=1)
  _assert_same_tree(load_checkpoint(out).params, _params(0))


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename_aside"])
def test_overwrite_replaces(tmp_path, monkeypatch, exchange):
  out = _save(tmp_path / "ck", seed=0)
  if not exchange:
    monkeypatch.setattr(ckpt, "_exchange", lambda a, b: False)
  _save(out, seed=1, overwrite=True)
  _assert_same_tree(load_checkpoint(out).params, _params(1))
  assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_overwrite_failing_rename_puts_old_back(tmp_path, monkeypatch):
  out = _save(tmp_path / "ck", seed=0)
  monkeypatch.setattr(ckpt, "_exchange", lambda a, b: False)
  rename = os.rename

  def flaky_rename(src, dst):
    if ".mixq-tmp-" in str(src):
      raise OSError("simulated failure moving the new checkpoint in")
    rename(src, dst)

  monkeypatch.setattr(os, "rename", flaky_rename)
  with pytest.raises(OSError, match="simulated"):
    _save(out, seed=1, overwrite=True)
  monkeypatch.undo()
  _assert_same_tree(load_checkpoint(out).params, _params(0))
  assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_overwrite_through_symlink(tmp_path):
  real = _save(tmp_path / "real", seed=0)
  link = tmp_path / "link"
  link.symlink_to(real)
  _save(link, seed=1, overwrite=True)
  _assert_same_tree(load_checkpoint(link).params, _params(1))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_overwrite_refuses_a_non_checkpoint_dir(tmp_path):
  model_dir = tmp_path / "hf_model"
  model_dir.mkdir()
  (model_dir / "model.safetensors").write_bytes(b"precious")
  with pytest.raises(FileExistsError, match="not a mixq_jax checkpoint"):
    _save(model_dir, overwrite=True)
  assert (model_dir / "model.safetensors").read_bytes() == b"precious"


def _crash_before_manifest(monkeypatch):
  def boom(*a, **k):
    raise RuntimeError("simulated crash after params were written")

  monkeypatch.setattr(ckpt, "_write_manifest", boom)


def test_failed_save_keeps_old_checkpoint(tmp_path, monkeypatch):
  out = _save(tmp_path / "ck", seed=0)
  _crash_before_manifest(monkeypatch)
  with pytest.raises(RuntimeError, match="simulated"):
    _save(out, seed=1, overwrite=True)
  _assert_same_tree(load_checkpoint(out).params, _params(0))
  assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # the temp dir was removed


def test_hard_crash_leftover_never_loads_and_is_cleaned(tmp_path, monkeypatch):
  out = _save(tmp_path / "ck", seed=0)
  fresh = tmp_path / "fresh"
  with monkeypatch.context() as m:
    _crash_before_manifest(m)
    m.setattr(ckpt, "_rmtree", lambda p: None)  # a killed process cleans nothing up
    for path in (out, fresh):
      with pytest.raises(RuntimeError, match="simulated"):
        _save(path, seed=1, overwrite=True)
  leftovers = sorted(p for p in tmp_path.iterdir() if p.name.startswith("."))
  assert len(leftovers) == 2 and all((p / "params").is_dir() for p in leftovers)
  _assert_same_tree(load_checkpoint(out).params, _params(0))
  for p in leftovers:
    with pytest.raises(CheckpointError, match="incomplete"):
      load_checkpoint(p)
  with pytest.raises(FileNotFoundError, match="interrupted save"):
    load_checkpoint(fresh)
  _save(out, seed=1, overwrite=True)
  _save(fresh, seed=1)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "fresh"]
  _assert_same_tree(load_checkpoint(fresh).params, _params(1))


def test_bad_inputs_write_nothing(tmp_path):
  with pytest.raises(TypeError, match="leaf a/b is a float"):
    save_checkpoint(tmp_path / "ck", {"a": {"b": 1.0}}, config={}, quant={})
  with pytest.raises(TypeError, match="dtype object"):
    save_checkpoint(tmp_path / "ck", {"a": np.array([None])}, config={}, quant={})
  with pytest.raises(TypeError, match="must be a"):
    save_checkpoint(tmp_path / "ck", [jnp.ones(2)], config={}, quant={})
  with pytest.raises(TypeError, match="config is not JSON"):
    save_checkpoint(tmp_path / "ck", {}, config={"dtype": jnp.bfloat16}, quant={})
  assert list(tmp_path.iterdir()) == []
