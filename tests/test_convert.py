"""convert -> checkpoint -> load -> identical logits; the CLIs end to end on stories260K."""

import json

import numpy as np
import pytest

from mixq_jax import convert, runtime
from mixq_jax.eval import ppl
from mixq_jax import generate as generate_cli
from tests.conftest import asset


@pytest.fixture(scope="module")
def stories():
  return str(asset("models/stories260K"))


@pytest.mark.parametrize("scheme, fp32", [("bf16", False), ("fp32", True)])
def test_save_load_identical_logits(stories, tmp_path, scheme, fp32):
  out = convert.convert(stories, scheme, str(tmp_path / "ck"))
  direct = runtime.load(source=stories, fp32=fp32)
  loaded = runtime.load(ckpt=out, fp32=fp32)
  assert loaded.config == direct.config and loaded.quant["scheme"] == scheme
  rng = np.random.default_rng(0)
  toks = rng.integers(0, direct.config.vocab_size, (2, 20))
  pos = np.broadcast_to(np.arange(20), toks.shape)
  np.testing.assert_array_equal(np.asarray(loaded.logits(toks, pos)), np.asarray(direct.logits(toks, pos)))
  assert loaded.tokenizer("Once upon a time")["input_ids"] == direct.tokenizer("Once upon a time")["input_ids"]


def test_convert_refuses_to_overwrite(stories, tmp_path):
  out = tmp_path / "ck"
  convert.convert(stories, "bf16", str(out))
  with pytest.raises(FileExistsError, match="--overwrite"):
    convert.convert(stories, "bf16", str(out))
  convert.convert(stories, "fp32", str(out), overwrite=True)
  assert runtime.load(ckpt=str(out)).quant["scheme"] == "fp32"


def test_bad_inputs(stories, tmp_path):
  with pytest.raises(ValueError, match="unknown scheme 'w3a3'"):
    convert.convert(stories, "w3a3", str(tmp_path / "x"))
  with pytest.raises(FileNotFoundError):
    convert.convert(str(tmp_path / "no_such_model"), "bf16", str(tmp_path / "y"))
  with pytest.raises(ValueError, match="exactly one"):
    runtime.load()
  with pytest.raises(SystemExit):
    convert.main(["--model", stories, "--scheme", "nope", "--out", str(tmp_path / "z")])


def test_clis_end_to_end(stories, tmp_path, capsys):
  ck = str(tmp_path / "ck")
  convert.main(["--model", stories, "--scheme", "bf16", "--out", ck])
  gen_json = tmp_path / "gen.json"
  generate_cli.main(["--ckpt", ck, "--prompt", "Once upon a time", "--prompt", "The dog",
                     "--max-new-tokens", "12", "--json", str(gen_json)])
  g = json.loads(gen_json.read_text())
  assert g["prompts"] == ["Once upon a time", "The dog"] and len(g["token_ids"]) == 2
  assert all(1 <= len(t) <= 12 for t in g["token_ids"]) and all(isinstance(t, str) for t in g["texts"])
  ppl_json = tmp_path / "ppl.json"
  ppl.main(["--ckpt", ck, "--n-ctx", "128", "--max-windows", "3", "--batch-size", "2",
            "--data", str(asset("data/wikitext2/test_rows.jsonl")), "--json", str(ppl_json)])
  r = json.loads(ppl_json.read_text())
  assert set(r) == {"ppl", "nll", "tokens", "windows", "n_ctx"}
  assert r["windows"] == 3 and r["n_ctx"] == 128 and r["tokens"] == 3 * 127 and 1 < r["ppl"] < 1000
  assert "perplexity" in capsys.readouterr().out
