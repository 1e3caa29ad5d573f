"""8-bit schemes end to end on the real tiny Llama (stories260K): convert -> checkpoint -> ppl/generate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixq_jax import convert, layers, runtime, schemes
from mixq_jax.eval import ppl
from mixq_jax.generate import generate
from mixq_jax.quant import calibrate
from mixq_jax.schemes import OUTLIER_COLS
from tests.conftest import asset

SCHEMES = ["w8a16", "w8a8", "llm_int8", "mix8"]
OPTS = convert.ConvertOptions(calib_samples=8, calib_seq_len=128, outlier_capacity=16)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  src = str(asset("models/stories260K"))
  root = tmp_path_factory.mktemp("ck")
  out = {s: convert.convert(src, s, str(root / s), options=OPTS, progress=False) for s in ["bf16"] + SCHEMES}
  return src, out


@pytest.fixture(scope="module")
def text():
  return ppl.read_text(asset("data/wikitext2/test_rows.jsonl"))


def test_perplexity_close_to_bf16(ckpts, text):
  _, out = ckpts
  res = {s: ppl.perplexity(runtime.load(ckpt=p), text, n_ctx=256, max_windows=4, batch_size=4, progress=False).ppl
         for s, p in out.items()}
  for s in SCHEMES:
    assert abs(res[s] / res["bf16"] - 1) < 0.02, res


def test_checkpoint_records_plan_and_packed_weights(ckpts):
  _, out = ckpts
  lm = runtime.load(ckpt=out["mix8"])
  assert lm.quant["scheme"] == "mix8" and lm.plan.get("layers_0.mlp.down_proj").capacity == 16
  q = lm.params["layers_0"]["self_attn"]["q_proj"]
  assert q["w_q"].dtype == np.int8 and q["s_w"].dtype == np.float32 and q["w_o"].shape[0] == 64 and q["w_o"].shape[1] == int(lm.variables["outliers"]["layers_0"]["self_attn"]["attn_in"]["calib_count"])
  assert "weight" not in q
  site = lm.variables["outliers"]["layers_0"]["mlp"]["down_in"]
  assert 0 <= int(site["count"]) <= 16 and int(site["calib_count"]) == int(site["count"])


def test_mix8_detection_runs_for_the_first_calls_only(ckpts):
  _, out = ckpts
  lm = runtime.load(ckpt=out["mix8"])
  assert lm.detect_left() == 2
  rng = np.random.default_rng(0)
  toks = rng.integers(0, 512, (2, 32))
  pos = np.broadcast_to(np.arange(32), toks.shape)
  lm.logits(toks, pos)
  lm.logits(toks, pos)
  assert lm.detect_left() == 0 and lm.calls == 2
  frozen = jax.tree.map(np.asarray, lm.variables["outliers"])
  lm.logits(toks * 0 + 7, pos)
  assert jax.tree.all(jax.tree.map(np.array_equal, frozen, jax.tree.map(np.asarray, lm.variables["outliers"])))


def test_mix8_outlier_column_cache(ckpts):
  """runtime.load builds the 16-bit column cache; detecting calls keep it equal to a rebuild from
  the grown sets; frozen calls read it and give the logits of the cache-free path."""
  _, out = ckpts
  lm = runtime.load(ckpt=out["mix8"])
  cache = lm.variables[OUTLIER_COLS]
  n_mix8 = sum(lq.scheme == "mix8" for _, lq in lm.plan.layers)
  n_sites = len({schemes.site_of(path) for path, lq in lm.plan.layers if lq.scheme == "mix8"})
  assert len(jax.tree_util.tree_leaves(cache)) == n_mix8 + n_sites  # w_o per layer, mask per site
  assert cache["layers_0"]["mlp"]["down_proj"]["w_o"].shape == (64, 16)
  rng = np.random.default_rng(3)
  toks = rng.integers(0, 512, (2, 32))
  toks[:, 5] = 300
  pos = np.broadcast_to(np.arange(32), toks.shape)
  counts = lambda v: sum(int(s) for s in jax.tree_util.tree_leaves(  # noqa: E731
      jax.tree.map(lambda a: a if a.ndim == 0 else 0, v["outliers"])))
  before = counts(lm.variables)
  lm.logits(toks, pos)
  lm.logits(toks[::-1], pos)
  rebuilt = layers.outlier_column_cache(lm.variables, lm.plan)
  assert jax.tree.all(jax.tree.map(np.array_equal, jax.tree.map(np.asarray, rebuilt),
                                   jax.tree.map(np.asarray, lm.variables[OUTLIER_COLS])))
  print(f"outlier set entries before/after detection: {before} -> {counts(lm.variables)}")
  with_cache = np.asarray(lm.logits(toks, pos))
  no_cache = {k: v for k, v in lm.variables.items() if k != OUTLIER_COLS}
  plain, _ = runtime._forward(lm.model, no_cache, jnp.asarray(toks, jnp.int32), jnp.asarray(pos, jnp.int32), False)
  np.testing.assert_array_equal(with_cache, np.asarray(plain))
  # The frozen call reads each site's outlier mask instead of scattering it anew.
  fwd = lambda v: str(jax.make_jaxpr(lambda v: runtime._forward(  # noqa: E731
      lm.model, v, jnp.asarray(toks, jnp.int32), jnp.asarray(pos, jnp.int32), False))(v))
  assert "scatter" in fwd(no_cache) and "scatter" not in fwd(lm.variables)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_generate_and_impls_agree(ckpts, scheme):
  _, out = ckpts
  xla = runtime.load(ckpt=out[scheme], impl="xla")
  interp = runtime.load(ckpt=out[scheme], impl="interpret")
  rng = np.random.default_rng(1)
  toks = rng.integers(0, 512, (2, 24))
  pos = np.broadcast_to(np.arange(24), toks.shape)
  a, b = np.asarray(xla.logits(toks, pos)), np.asarray(interp.logits(toks, pos))
  assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
  res = generate(xla, ["Once upon a time"], max_new_tokens=8)
  assert 1 <= len(res.token_ids[0]) <= 8 and isinstance(res.texts[0], str)


def test_calibration_errors(tmp_path):
  tok = lambda t: {"input_ids": list(range(len(t)))}  # noqa: E731
  with pytest.raises(FileNotFoundError, match="calibration data not found"):
    calibrate.calibration_batches(tok, tmp_path / "none.jsonl")
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(ValueError, match="empty"):
    calibrate.calibration_batches(tok, empty)
  short = tmp_path / "short.jsonl"
  short.write_text('{"text": "abc"}\n')
  with pytest.raises(ValueError, match="fewer than"):
    calibrate.calibration_batches(tok, short, samples=4, seq_len=64)
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"body": "abc"}\n')
  with pytest.raises(ValueError, match="bad.jsonl:1"):
    calibrate.calibration_batches(tok, bad)


def test_convert_errors(ckpts, tmp_path):
  src, _ = ckpts
  with pytest.raises(FileNotFoundError, match="calibration"):
    convert.convert(src, "mix8", str(tmp_path / "a"), options=convert.ConvertOptions(calib_data=str(tmp_path / "x")))
  with pytest.raises(ValueError, match="matches no layer"):
    convert.convert(src, "w8a8", str(tmp_path / "b"), options=convert.ConvertOptions(rules=("attn\\.qq=bf16",)))
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
