"""bench/throughput.py on the CPU with the tiny preset: it runs every registered scheme, prints the
table, writes valid JSON and plots; presets have the real parameter counts; quantized random
variables come in packed form with a full outlier set."""

import json
import pathlib
import sys

import jax
import numpy as np
import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import presets  # noqa: E402
import throughput  # noqa: E402

from mixq_jax import schemes  # noqa: E402

RECORD_KEYS = {"scheme", "batch", "prompt_len", "decode_len", "decode_tok_s", "prefill_tok_s", "peak_mem_bytes",
               "speedup_vs_bf16"}


def test_cli_all_schemes_table_and_json(tmp_path, capsys):
  out = tmp_path / "tp.json"
  throughput.main(["--model", "tiny", "--scheme", "all", "--batch-size", "2", "--prompt-len", "8",
                   "--decode-len", "4", "--reps", "1", "--peer", "off",
                   "--compile-workers", "2", "--json", str(out), "--plots", str(tmp_path / "plots")])
  text = capsys.readouterr().out
  assert "| Batch Size | Prompt | Decode Length | Decode tokens/s | Prefill tokens/s | Memory (peak device)" in text
  data = json.loads(out.read_text())
  assert data["info"]["jax"] == jax.__version__ and data["info"]["copy_bw_bytes_s"] > 0
  gen = [r for r in data["records"] if r.get("kind") != "ppl"]
  expected = [s for s in schemes.SCHEMES if s != "fp32"]  # a newly registered scheme shows up here
  assert [r["scheme"] for r in gen] == expected
  for r in gen:
    assert RECORD_KEYS <= set(r), r
    assert r["status"] == "ok", r
    assert (r["batch"], r["prompt_len"], r["decode_len"]) == (2, 8, 4)
    assert r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 and r["peak_mem_bytes"] > r["kv_bytes"]
    assert r["speedup_vs_bf16"] == pytest.approx(r["decode_tok_s"] / gen[0]["decode_tok_s"])
    assert f"**{r['scheme']}**" in text
  assert gen[0]["speedup_vs_bf16"] == 1.0
  if pytest.importorskip("matplotlib"):
    assert (tmp_path / "plots" / "decode_vs_batch_P8.png").stat().st_size > 1000


def test_ppl_forward_benchmark():
  cfg = presets.model_config("tiny")
  ids = np.arange(100) % 7 + 3
  recs = throughput.benchmark(cfg, ["bf16", "mix8"], [], [8], 4, ppl_batches=[2], ppl_ctx=16, ppl_tokens=ids,
                              reps=1, workers=2, log=lambda *a: None)
  assert [(r["scheme"], r["kind"], r["batch"], r["n_ctx"], r["status"]) for r in recs] == [
      ("bf16", "ppl", 2, 16, "ok"), ("mix8", "ppl", 2, 16, "ok")]
  assert recs[0]["speedup_vs_bf16"] == 1.0 and recs[1]["it_s"] > 0


def test_presets_have_real_sizes():
  billions = {n: presets.param_count(presets.model_config(n)) / 1e9 for n in presets.PRESETS}
  assert billions["llama-2-7b"] == pytest.approx(6.74, abs=0.01)
  assert billions["llama-2-13b"] == pytest.approx(13.02, abs=0.01)
  assert billions["llama-2-70b"] == pytest.approx(68.98, abs=0.01)
  assert billions["llama-3-8b"] == pytest.approx(8.03, abs=0.01)
  assert billions["mistral-7b"] == pytest.approx(7.24, abs=0.01)
  assert billions["qwen2-7b"] == pytest.approx(7.62, abs=0.01)
  assert billions["falcon-7b"] == pytest.approx(6.92, abs=0.01)
  with pytest.raises(ValueError, match="neither a preset"):
    presets.model_config("llama-9b")


def test_random_variables_packed_with_full_outlier_set():
  cfg = presets.model_config("tiny")
  v = throughput.random_variables(cfg, "mix8", 32, seed=0)
  dense = v["params"]["layers_1"]["mlp"]["down_proj"]
  assert dense["w_q"].dtype == np.int8 and "weight" not in dense
  assert np.abs(np.asarray(dense["w_q"], np.int32)).mean() > 30  # random, not zeros
  site = v["outliers"]["layers_1"]["mlp"]["down_in"]
  idx = np.asarray(site["idx"])
  assert int(site["count"]) == int(site["calib_count"]) == 32 == len(set(idx.tolist()))
  assert idx.max() < cfg.intermediate_size


def test_abstract_7b_needs_no_float_copy():
  # The same path builds the 70B preset (~71 GB instead of 138 GB in bf16); 7B keeps the test fast.
  cfg = presets.model_config("llama-2-7b")
  av = jax.eval_shape(lambda: throughput.random_variables(cfg, "mix8", 128, seed=0))
  gb = throughput.tree_bytes(av) / 1e9
  # int8 weights + stored 16-bit outlier columns + their [N, C] cache (0.35 GB) + bf16 embed/head
  assert 7.2 < gb < 7.9, gb


def test_torch_peer_entry_point_on_cpu(tmp_path):
  # The entry point run_peer starts in a subprocess (on the GPU it uses device "cuda").
  pytest.importorskip("torch")
  spec, out = tmp_path / "spec.json", tmp_path / "out.json"
  spec.write_text(json.dumps(dict(hf=presets.hf_config("tiny"), batches=[2], prompt_lens=[8], decode_len=3,
                                  reps=1, compile=False, device="cpu")))
  throughput.main([throughput.PEER_FLAG, str(spec), str(out)])
  recs = json.loads(out.read_text())
  assert recs[0]["status"] == "ok" and recs[0]["decode_tok_s"] > 0 and recs[0]["scheme"] == "torch-bf16"


def test_tensor_parallel_run_on_host_devices(tmp_path):
  """--tp 2 over 2 host CPU devices (a subprocess: the device count is fixed when jax starts), with
  the Pallas kernels (interpret mode) under shard_map: weights are created in their shards, every
  configuration runs, memory is per device."""
  import os
  import subprocess

  out = tmp_path / "tp2.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run([sys.executable, str(BENCH / "throughput.py"), "--model", "tiny", "--scheme", "bf16,mix8",
                         "--batch-size", "2", "--prompt-len", "8", "--decode-len", "4", "--reps", "1", "--peer", "off",
                         "--tp", "2", "--impl", "interpret", "--compile-workers", "2", "--json", str(out)],
                        capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "x 2 (tensor parallel)" in proc.stdout
  data = json.loads(out.read_text())
  assert data["info"]["tp"] == 2
  recs = data["records"]
  assert [(r["scheme"], r["tp"], r["status"]) for r in recs] == [("bf16", 2, "ok"), ("mix8", 2, "ok")]
  assert all(r["decode_tok_s"] > 0 for r in recs)


def test_sharded_random_variables_split_on_creation():
  """Leaves are generated directly with their NamedSharding (a 1-device mesh on this process: the
  placement path runs; the split itself is covered by the --tp test above and tests/test_sharding.py)."""
  from mixq_jax import sharding

  cfg = presets.model_config("tiny")
  mesh = sharding.make_mesh(1)
  v = throughput.random_variables(cfg, "mix8", 16, seed=0, mesh=mesh)
  leaves = jax.tree.leaves(v)
  assert all(isinstance(a.sharding, jax.sharding.NamedSharding) for a in leaves)
  assert throughput.device0_bytes(v) == throughput.tree_bytes(v)
