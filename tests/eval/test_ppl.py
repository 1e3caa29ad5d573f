"""Perplexity protocol details: windowing, batching, data reading and its errors."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixq_jax.eval import ppl
from tests.test_generate import CFG, _Tok, lm  # noqa: F401  (fixture)


def _text(n):
  rng = np.random.default_rng(0)
  return " ".join(map(str, rng.integers(4, 60, n)))


def test_windows_and_batching_agree(lm):  # noqa: F811
  text = _text(100)
  one = ppl.perplexity(lm, text, n_ctx=16, batch_size=1, progress=False)
  three = ppl.perplexity(lm, text, n_ctx=16, batch_size=3, progress=False)  # ragged last batch
  assert one.windows == 6 and one.tokens == 6 * 15
  assert math.isclose(one.ppl, three.ppl, rel_tol=1e-6)
  # by hand: mean over windows of the mean NLL of tokens 1..n_ctx-1
  ids = np.array(_Tok()(text)["input_ids"][:96]).reshape(6, 16)
  logits = lm.logits(ids, np.broadcast_to(np.arange(16), ids.shape))
  logp = jax.nn.log_softmax(logits[:, :-1], -1)
  nll = -jnp.take_along_axis(logp, ids[:, 1:, None], -1).mean()
  assert math.isclose(one.nll, float(nll), rel_tol=1e-5)
  assert ppl.perplexity(lm, text, n_ctx=16, max_windows=2, progress=False).windows == 2


def test_errors(lm, tmp_path):  # noqa: F811
  with pytest.raises(ValueError, match="fewer than one window"):
    ppl.perplexity(lm, _text(10), n_ctx=16, progress=False)
  with pytest.raises(ValueError, match="max_position_embeddings"):
    ppl.perplexity(lm, _text(10), n_ctx=4096, progress=False)
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    ppl.read_text(tmp_path / "nope.jsonl")
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "a"}\n{"txt": "b"}\n')
  with pytest.raises(ValueError, match="bad.jsonl:2"):
    ppl.read_text(bad)
  empty = tmp_path / "empty.txt"
  empty.write_text("  \n")
  with pytest.raises(ValueError, match="empty"):
    ppl.read_text(empty)


def test_read_text_joins_rows(tmp_path):
  p = tmp_path / "rows.jsonl"
  p.write_text("\n".join(json.dumps({"text": t}) for t in ["a", "", "b"]) + "\n")
  assert ppl.read_text(p) == "a\n\n\n\nb"
  q = tmp_path / "plain.txt"
  q.write_text("hello\nworld")
  assert ppl.read_text(q) == "hello\nworld"


def test_nll_in_row_blocks_equals_one_block(lm, monkeypatch):  # noqa: F811
  """A perplexity batch is scored a block of rows at a time (Transformer targets=...); the blocks
  change the peak memory, not the result."""
  from mixq_jax.models import transformer

  text = _text(100)
  whole = ppl.perplexity(lm, text, n_ctx=16, batch_size=1, progress=False)
  ids = jnp.asarray(np.array(_Tok()(text)["input_ids"][:80]).reshape(5, 16))
  pos = jnp.broadcast_to(jnp.arange(16), ids.shape)
  count = lambda: str(jax.make_jaxpr(  # noqa: E731
      lambda v: lm.model.apply(v, ids, pos, targets=ids)[0])(lm.variables)).count("name=log_softmax")  # one per block
  one_block = count()
  monkeypatch.setattr(transformer, "NLL_BLOCK_BYTES", 1)  # one row per block
  assert count() == one_block + 4
  blocks = ppl.perplexity(lm, text, n_ctx=16, batch_size=5, progress=False)  # a new shape: traced with 1-row blocks
  assert math.isclose(whole.ppl, blocks.ppl, rel_tol=1e-6)
