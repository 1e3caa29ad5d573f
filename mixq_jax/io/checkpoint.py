"""Orbax checkpoints: params + model config + quantization metadata + a format version.

A checkpoint is a directory DIR holding

  DIR/params/                 Orbax PyTree checkpoint of the array leaves (a flat dict, see below)
  DIR/config.json             model config (the caller's JSON-able dict)
  DIR/quant.json              quantization metadata (the caller's JSON-able dict)
  DIR/tokenizer/              `tokenizer.save_pretrained(...)`, only when a tokenizer was given
  DIR/mixq_checkpoint.json    the manifest, written last: format version, items, the params tree
                              (path, dtype and shape of every leaf, empty dicts) and the size and
                              sha256 of every file, so truncation or corruption is caught and named.

Writes are atomic: everything goes to a hidden sibling `.DIR.mixq-tmp-*`, is fsynced, and is then
renamed into place. A save interrupted at any point leaves either nothing under DIR or the previous
complete checkpoint; its hidden leftovers never load (no manifest) and the next save to DIR removes
them. Replacing an existing checkpoint (`overwrite=True`) swaps the two directories in one
`renameat2(RENAME_EXCHANGE)` where the OS offers it, else renames the old one aside, the new one
in, and deletes the old one.

Orbax sees a flat dict {name: array} rather than the nested params: Orbax joins nested keys with
"." (so {"a.b": x} and {"a": {"b": y}} collide), cannot store zero-size arrays, and drops empty
dicts. The manifest records the real tree, and restore rebuilds it exactly, as jax arrays on the
default device (explicit restore args, so a checkpoint written on CPU restores on a GPU).
"""

from __future__ import annotations

import collections.abc
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import re
import secrets
import shutil
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORMAT_VERSION: int = 1

MANIFEST = "mixq_checkpoint.json"
PARAMS = "params"
CONFIG = "config.json"
QUANT = "quant.json"
TOKENIZER = "tokenizer"
_FORMAT_NAME = "mixq_jax.checkpoint"
_TMP_TAG = ".mixq-tmp-"
_OLD_TAG = ".mixq-old-"


class CheckpointError(Exception):
  """A checkpoint that cannot be loaded: incomplete, wrong version, missing item, corrupt file."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  params: Any  # nested dicts of jax arrays, exactly the tree that was saved
  config: dict  # model config as saved (a JSON round trip: tuples come back as lists)
  quant: dict  # quantization metadata as saved (JSON round trip)
  format_version: int
  path: pathlib.Path


# ----------------------------------------------------------------------------- params tree


def _flatten(params: Any) -> tuple[list[tuple[tuple[str, ...], Any]], list[tuple[str, ...]]]:
  """Nested dicts -> ([(key path, array)], [key paths of empty dicts]), in sorted key order."""
  if not isinstance(params, collections.abc.Mapping):
    raise TypeError(f"params must be a (nested) dict of arrays, got {type(params).__name__}")
  leaves, empties = [], []

  def walk(node: collections.abc.Mapping, path: tuple[str, ...]) -> None:
    if not node:
      empties.append(path)
    for key in sorted(node):
      if not isinstance(key, str):
        raise TypeError(f"params keys must be str, got {key!r} at {'/'.join(path) or '<root>'}")
      value = node[key]
      if isinstance(value, collections.abc.Mapping):
        walk(value, path + (key,))
      elif isinstance(value, (jax.Array, np.ndarray)) and value.dtype != object:
        leaves.append((path + (key,), value))
      else:
        raise TypeError(
            f"params leaf {'/'.join(path + (key,))} is a {type(value).__name__}"
            f"{' of dtype object' if isinstance(value, np.ndarray) else ''}; only jax/numpy arrays"
            " (and nested dicts of them) can be saved"
        )

  walk(params, ())
  return leaves, empties


def _orbax_names(paths: list[tuple[str, ...]]) -> list[str]:
  """Readable, unique Orbax key per leaf: the dotted path, or leaf{i} if dotted paths collide."""
  names = [".".join(re.sub(r"[^A-Za-z0-9_.\-]", "_", k) for k in p) for p in paths]
  if len(set(names)) != len(names) or any(not n or n.startswith(".") for n in names):
    names = [f"leaf{i}" for i in range(len(paths))]
  return names


def _set_path(tree: dict, path: list[str], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


# ----------------------------------------------------------------------------- files


def _fsync_dir(path: pathlib.Path) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:  # some filesystems refuse fsync on a directory; the data files are synced
    pass
  finally:
    os.close(fd)


def _hash_and_sync(path: pathlib.Path) -> dict:
  """sha256 and size of one file, fsyncing it on the way (one read serves both)."""
  with open(path, "rb") as f:
    digest = hashlib.file_digest(f, "sha256").hexdigest()
    os.fsync(f.fileno())
  return {"size": path.stat().st_size, "sha256": digest}


def _hash_only(path: pathlib.Path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _pool() -> concurrent.futures.ThreadPoolExecutor:
  # hashlib releases the GIL on large buffers, so files hash in parallel.
  return concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))


def _write_json(path: pathlib.Path, obj: Any) -> None:
  path.write_text(json.dumps(obj, indent=2) + "\n")


def _rmtree(path: pathlib.Path) -> None:
  if path.is_symlink():  # rmtree refuses links; an exchanged symlinked checkpoint is one
    path.unlink(missing_ok=True)
  else:
    shutil.rmtree(path, ignore_errors=True)


def _exchange(a: pathlib.Path, b: pathlib.Path) -> bool:
  """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
  if not sys.platform.startswith("linux"):
    return False
  try:
    renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
  except (OSError, AttributeError):  # glibc < 2.28 or another libc
    return False
  at_fdcwd, rename_exchange = -100, 2
  if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
    return True
  return False  # e.g. EINVAL on a filesystem without exchange; the caller falls back


def _leftovers(path: pathlib.Path) -> list[pathlib.Path]:
  """Hidden siblings that interrupted saves to `path` left behind."""
  prefixes = (f".{path.name}{_TMP_TAG}", f".{path.name}{_OLD_TAG}")
  if not path.parent.is_dir():
    return []
  return sorted(p for p in path.parent.iterdir() if p.name.startswith(prefixes))


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax logs a dozen INFO lines per save through absl; keep them out of the user's logs."""
  logger = logging.getLogger("absl")
  level = logger.level
  if level < logging.WARNING:
    logger.setLevel(logging.WARNING)
  try:
    yield
  finally:
    logger.setLevel(level)


# ----------------------------------------------------------------------------- save


def save_checkpoint(
    path: str | os.PathLike,
    params: Any,
    *,
    config: dict,
    quant: dict,
    tokenizer: Any = None,
    overwrite: bool = False,
) -> pathlib.Path:
  """Writes a checkpoint directory atomically and returns its path.

  Args:
    path: the checkpoint directory to create.
    params: nested dicts (str keys) of jax or numpy arrays; may hold empty dicts, 0-d and
      zero-size arrays, any dtype (bfloat16, int8, int4, uint8, float8, ...).
    config: model config, JSON-able.
    quant: quantization metadata, JSON-able.
    tokenizer: optional transformers tokenizer, stored with `save_pretrained`.
    overwrite: replace an existing checkpoint at `path`; without it an existing path is an error.

  Raises:
    FileExistsError: `path` exists and `overwrite` is False, or `path` exists and is not a
      mixq_jax checkpoint (never replaced, so a mistyped path cannot wipe a model directory).
    TypeError: params / config / quant of a kind that cannot be saved.
  """
  path = pathlib.Path(path).expanduser().absolute()
  leaves, empties = _flatten(params)
  for item, obj in ((CONFIG, config), (QUANT, quant)):
    if not isinstance(obj, dict):
      raise TypeError(f"{item[:-5]} must be a dict, got {type(obj).__name__}")
    try:
      json.dumps(obj)
    except (TypeError, ValueError) as e:
      raise TypeError(f"{item[:-5]} is not JSON-serializable: {e}") from e
  if path.exists() or path.is_symlink():
    if not overwrite:
      raise FileExistsError(
          f"{path} already exists; pass overwrite=True (--overwrite) to replace it"
      )
    if not (path.is_dir() and ((path / MANIFEST).is_file() or not any(path.iterdir()))):
      raise FileExistsError(
          f"{path} exists and is not a mixq_jax checkpoint (no {MANIFEST});"
          " refusing to overwrite it"
      )
  path.parent.mkdir(parents=True, exist_ok=True)
  for leftover in _leftovers(path):
    _rmtree(leftover)

  tmp = path.parent / f".{path.name}{_TMP_TAG}{os.getpid()}-{secrets.token_hex(4)}"
  tmp.mkdir()
  try:
    _write_contents(tmp, leaves, empties, config=config, quant=quant, tokenizer=tokenizer)
    _install(tmp, path)
  except BaseException:
    _rmtree(tmp)
    raise
  return path


def _write_contents(tmp, leaves, empties, *, config, quant, tokenizer) -> None:
  """Fills the temp dir: params, config, quant, tokenizer, then (last) the manifest."""
  paths = [p for p, _ in leaves]
  names = _orbax_names(paths)
  tree = []
  stored = {}
  for p, name, value in zip(paths, names, (v for _, v in leaves)):
    # Orbax refuses zero-size arrays; shape and dtype alone rebuild them.
    in_orbax = value.size > 0
    tree.append({
        "path": list(p),
        "name": name,
        "dtype": jnp.dtype(value.dtype).name,
        "shape": list(value.shape),
        "stored": in_orbax,
    })
    if in_orbax:
      stored[name] = value

  params_dir = tmp / PARAMS
  if stored:
    import orbax.checkpoint as ocp  # imported here: it is slow and only save/load need it

    with _quiet_orbax():
      ocp.PyTreeCheckpointer().save(params_dir, stored)
  else:
    params_dir.mkdir()
  _write_json(tmp / CONFIG, config)
  _write_json(tmp / QUANT, quant)
  items = [PARAMS, CONFIG, QUANT]
  if tokenizer is not None:
    tokenizer.save_pretrained(str(tmp / TOKENIZER))
    items.append(TOKENIZER)

  files = sorted(p for p in tmp.rglob("*") if p.is_file())
  with _pool() as pool:
    digests = list(pool.map(_hash_and_sync, files))
  manifest = {
      "format": _FORMAT_NAME,
      "format_version": FORMAT_VERSION,
      "items": items,
      "params_tree": {"leaves": tree, "empty_dicts": [list(p) for p in empties]},
      "files": {f.relative_to(tmp).as_posix(): d for f, d in zip(files, digests)},
      "versions": {"jax": jax.__version__, "orbax": _orbax_version()},
  }
  _write_manifest(tmp / MANIFEST, manifest)
  for d in sorted({f.parent for f in files} | {tmp}, key=lambda p: -len(p.parts)):
    _fsync_dir(d)


def _write_manifest(path: pathlib.Path, manifest: dict) -> None:
  with open(path, "w") as f:
    f.write(json.dumps(manifest, indent=1) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _orbax_version() -> str:
  try:
    import orbax.checkpoint as ocp

    return str(getattr(ocp, "__version__", "unknown"))
  except ImportError:
    return "unknown"


def _install(tmp: pathlib.Path, path: pathlib.Path) -> None:
  """Moves the finished tmp dir to `path`; an existing checkpoint there is replaced."""
  if not path.exists():
    os.rename(tmp, path)
  elif _exchange(tmp, path):
    _fsync_dir(path.parent)
    _rmtree(tmp)  # now holds the old checkpoint
  else:
    old = path.parent / f".{path.name}{_OLD_TAG}{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(path, old)
    try:
      os.rename(tmp, path)
    except BaseException:
      os.rename(old, path)  # put the old checkpoint back rather than leave only a hidden copy
      raise
    _fsync_dir(path.parent)
    _rmtree(old)
  _fsync_dir(path.parent)


# ----------------------------------------------------------------------------- load


def _read_manifest(path: pathlib.Path) -> dict:
  if not path.exists():
    hint = ""
    if leftovers := _leftovers(path):
      hint = f" (an interrupted save left {', '.join(p.name for p in leftovers)} in {path.parent})"
    raise FileNotFoundError(f"no checkpoint at {path}{hint}")
  if not path.is_dir():
    raise CheckpointError(f"{path} is not a checkpoint directory")
  manifest_path = path / MANIFEST
  if not manifest_path.is_file():
    raise CheckpointError(
        f"{path} has no {MANIFEST}: an incomplete save or not a mixq_jax checkpoint"
    )
  try:
    manifest = json.loads(manifest_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{manifest_path} is corrupt: {e}") from e
  if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT_NAME:
    raise CheckpointError(f"{manifest_path} is not a mixq_jax checkpoint manifest")
  version = manifest.get("format_version")
  if version != FORMAT_VERSION:
    raise CheckpointError(
        f"{path}: checkpoint format_version={version!r}, but this mixq_jax reads"
        f" format_version={FORMAT_VERSION}; re-convert the model"
    )
  for key in ("items", "files", "params_tree"):
    if key not in manifest:
      raise CheckpointError(f"{manifest_path} lacks {key!r}")
  return manifest


def _verify(path: pathlib.Path, manifest: dict, items: list[str], *, hashes: bool) -> None:
  """Every item present; every file of those items present, of the right size and sha256."""
  for item in items:
    if not (path / item).exists():
      raise CheckpointError(f"{path}: item {item!r} is missing ({path / item})")
  checked = []
  for rel, want in manifest["files"].items():
    if rel.split("/")[0] not in items:
      continue
    f = path / rel
    if not f.is_file():
      raise CheckpointError(f"{path}: file {rel} is missing")
    size = f.stat().st_size
    if size != want["size"]:
      raise CheckpointError(f"{path}: file {rel} is {size} bytes, the manifest says {want['size']}")
    checked.append((rel, want["sha256"]))
  if not hashes:
    return
  with _pool() as pool:
    got = list(pool.map(_hash_only, [path / rel for rel, _ in checked]))
  for (rel, want), digest in zip(checked, got):
    if digest != want:
      raise CheckpointError(f"{path}: file {rel} is corrupt (sha256 {digest} != {want})")


def load_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> Checkpoint:
  """Loads a checkpoint written by `save_checkpoint`.

  Args:
    path: the checkpoint directory.
    verify: check every file's sha256 (reads every byte once more; sizes are always checked).

  Raises:
    FileNotFoundError: nothing at `path`.
    CheckpointError: incomplete checkpoint, wrong format version, missing item, corrupt file.
  """
  path = pathlib.Path(path).expanduser().absolute()
  manifest = _read_manifest(path)
  _verify(path, manifest, manifest["items"], hashes=verify)
  config = _read_json(path, CONFIG)
  quant = _read_json(path, QUANT)
  params = _restore_params(path, manifest["params_tree"])
  return Checkpoint(
      params=params,
      config=config,
      quant=quant,
      format_version=manifest["format_version"],
      path=path,
  )


def _read_json(path: pathlib.Path, item: str) -> dict:
  try:
    return json.loads((path / item).read_text())
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: cannot read {item}: {e}") from e


def _restore_params(path: pathlib.Path, spec: dict) -> dict:
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  stored = [leaf for leaf in spec["leaves"] if leaf["stored"]]
  restored = {}
  if stored:
    import orbax.checkpoint as ocp

    restore_args = {
        leaf["name"]: ocp.ArrayRestoreArgs(
            sharding=sharding, global_shape=tuple(leaf["shape"]), dtype=jnp.dtype(leaf["dtype"])
        )
        for leaf in stored
    }
    try:
      with _quiet_orbax():
        restored = ocp.PyTreeCheckpointer().restore(
            path / PARAMS, args=ocp.args.PyTreeRestore(restore_args=restore_args)
        )
    except Exception as e:  # Orbax / TensorStore errors come in many types
      raise CheckpointError(f"{path}: Orbax cannot restore {PARAMS}: {e}") from e

  params: dict = {}
  for p in spec["empty_dicts"]:
    if p:
      _set_path(params, p, {})
  for leaf in spec["leaves"]:
    shape, dtype = tuple(leaf["shape"]), jnp.dtype(leaf["dtype"])
    if leaf["stored"]:
      if leaf["name"] not in restored:
        raise CheckpointError(f"{path}: {PARAMS} lacks array {leaf['name']!r}")
      value = restored[leaf["name"]]
      if not isinstance(value, jax.Array):
        value = jax.device_put(value, sharding)
    else:
      value = jnp.zeros(shape, dtype)
    if value.shape != shape or value.dtype != dtype:
      raise CheckpointError(
          f"{path}: array {'/'.join(leaf['path'])} restored as {value.dtype}{list(value.shape)},"
          f" the manifest says {dtype}{list(shape)}"
      )
    _set_path(params, leaf["path"], value)
  return params


def load_checkpoint_tokenizer(path: str | os.PathLike):
  """The transformers tokenizer saved with the checkpoint, or None if none was saved."""
  path = pathlib.Path(path).expanduser().absolute()
  manifest = _read_manifest(path)
  if TOKENIZER not in manifest["items"]:
    return None
  _verify(path, manifest, [TOKENIZER], hashes=True)
  import transformers  # slow to import; only needed here

  return transformers.AutoTokenizer.from_pretrained(str(path / TOKENIZER))
