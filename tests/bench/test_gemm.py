"""bench/gemm.py on the CPU: the tuned-table writer and the quantize_act timing setup."""

import importlib.util
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))

import gemm  # noqa: E402


def _load(path):
  spec = importlib.util.spec_from_file_location("table_under_test", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_write_table_keeps_other_groups_provenance(tmp_path, monkeypatch):
  out = tmp_path / "tuned_table.py"
  monkeypatch.setenv("TUNED_TABLE_OUT", str(out))
  from mixq_jax.pallas_kernels import tuned_table
  before = dict(tuned_table.PROVENANCE)
  monkeypatch.setattr(tuned_table, "PROVENANCE", dict(before))  # write_table updates it in memory
  table = dict(tuned_table.TABLE)
  table["quantize_act|h900|4096|0|4096"] = {"block_m": 1, "block_k": 1024, "passes": 2}
  info = {"device": "Test GPU", "jax": "9.9", "date": "2030-01-01"}
  gemm.write_table(table, info, ["quantize_act|h900"])
  # A second group swept later in the same process (as `gemm4.py --tune` does per kernel) keeps the first's line.
  table["w4a8|h900|16|*|*"] = {"block_m": 16, "split_k": 2}
  gemm.write_table(table, {**info, "date": "2030-01-02"}, ["w4a8|h900"])
  got = _load(out)
  assert got.TABLE == table
  assert got.PROVENANCE["quantize_act|h900"] == "Test GPU, jax 9.9, 2030-01-01"
  assert got.PROVENANCE["w4a8|h900"] == "Test GPU, jax 9.9, 2030-01-02"
  for group, line in before.items():
    assert got.PROVENANCE[group] == line


def test_quantize_act_timing_ignores_the_gemm_n(monkeypatch):
  """quantize_act times x [M, K] alone: the GEMM shape's N used to size its repetitions as if it ran
  a 2MNK-flop GEMM, so one jitted call held a handful of ~25 us kernels and the dispatch doubled
  the time per call (bench/h100_2026-12-05c/quantize_act.json; fixed 2026-12-05)."""
  seen = []

  def fake_time_call(fn, sets, samples=25, loops=None, t_est=None):
    seen.append((len(sets), t_est))
    return 1e-6

  monkeypatch.setattr(gemm, "time_call", fake_time_call)
  monkeypatch.setattr(gemm, "make_sets", lambda kind, m, n, k, r: [None] * r)
  monkeypatch.setattr(gemm, "check", lambda kind, fn, ref, args: 0.0)
  m, k = 4096, 4096  # where a 4096-wide GEMM's flops would dominate the estimate
  for n in (0, 4096):
    gemm.run_one("quantize_act", m, n, k)
  assert seen[0] == seen[1]
  assert seen[0][1] == gemm.est_seconds(m, 0, k, gemm.moved_bytes("quantize_act", m, 0, k))
  assert seen[0][0] >= 8  # enough ~20 us kernels per jitted call to amortize the dispatch


def test_device_time_of_a_small_program():
  import jax.numpy as jnp
  sets = [(jnp.ones((64, 64), jnp.float32) * i,) for i in range(2)]
  t = gemm.device_time(lambda a: jnp.tanh(a @ a), sets, reps=1)
  assert 0 < t < 1.0


def test_run_one_reports_device_time(monkeypatch):
  monkeypatch.setattr(gemm, "DEVICE_TIME", True)
  monkeypatch.setattr(gemm, "SAMPLES", 1)
  t, err, cfg = gemm.run_one("quantize_act", 16, 0, 256)
  assert t > 0 and err < 2e-2 and cfg["passes"] in (1, 2)
  assert 0 < gemm.LAST_DEVICE_S < 10.0


def test_table_row_shows_quantize_act_as_share_of_copy_bandwidth():
  row = {"shape": "7b/down", "M": 4096, "N": 0, "K": 11008, "bf16": float("nan"),
         "quantize_act": (78.4, 0.57, 0.0, "%"), "w8a8": (10.0, 1.5, 0.0)}
  line = gemm.fmt_row(row, ["quantize_act", "w8a8"])
  assert "57%" in line and "1.50x" in line


def test_compile_programs_in_threads_and_time_them():
  """The tune's parallel compile: one program per fn, a failing fn gives its exception (the others still
  compile), and time_call runs a given compiled program, whose loop carry is fn of each set."""
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  sets = [(jnp.arange(8.0),), (jnp.linspace(-1.0, 1.0, 8),)]
  good = lambda x: x * 2 + 1
  bad = lambda x: x @ jnp.ones((3,))  # shape mismatch: fails while tracing
  progs = gemm.compile_programs([good, bad, good], sets, loops=2, workers=3)
  assert isinstance(progs[1], Exception)
  assert not isinstance(progs[0], Exception) and not isinstance(progs[2], Exception)
  out = progs[0](sets)
  for (x,), y in zip(sets, out):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x) * 2 + 1)
  assert gemm.time_call(good, sets, samples=2, loops=2, program=progs[2]) > 0


def test_tune_writes_w8a16_entries(tmp_path, monkeypatch):
  """`gemm.py --tune` on a tiny shape: candidates compiled in threads, a per-shape entry and a bucket default
  written, the log carrying the same-process bf16 time."""
  import json  # noqa: PLC0415

  out, log = tmp_path / "tuned_table.py", tmp_path / "tune.json"
  monkeypatch.setenv("TUNED_TABLE_OUT", str(out))
  monkeypatch.setattr(gemm, "SAMPLES", 1)
  monkeypatch.setitem(gemm.CANDIDATES, "w8a16", {"small": [(16, 32, 128, 4, 2, 1), (16, 16, 128, 4, 2, 2)]})
  from mixq_jax.pallas_kernels import configs, tuned_table  # noqa: PLC0415
  monkeypatch.setattr(tuned_table, "PROVENANCE", dict(tuned_table.PROVENANCE))
  monkeypatch.setattr(sys, "argv", ["gemm.py", "--tune", "--kernels", "w8a16", "--ms", "16", "--tune-shapes", "64x256",
                                    "--compile-workers", "2", "--json", str(log)])
  gemm.main()
  gpu = configs.gpu_name()
  text = out.read_text()
  assert f"'w8a16|{gpu}|16|64|256'" in text and f"'w8a16|{gpu}|16|*|*'" in text
  rows = json.loads(log.read_text())["tune_log"]
  assert len(rows) == 2 and all(r["bf16_time_us"] > 0 and r["max_rel_err"] < 2e-2 for r in rows)


def test_samples_flag_sets_the_sample_count(monkeypatch):
  """`--samples N` reaches time_call (the override every timing reads), and N < 1 is refused."""
  import pytest
  seen = []
  monkeypatch.setattr(gemm, "SAMPLES", 0)
  monkeypatch.setattr(gemm, "bench", lambda args: seen.append(gemm.SAMPLES))
  monkeypatch.setattr(sys, "argv", ["gemm.py", "--samples", "7"])
  gemm.main()
  assert seen == [7]
  monkeypatch.setattr(sys, "argv", ["gemm.py", "--samples", "0"])
  with pytest.raises(SystemExit):
    gemm.main()


def test_ncu_probe_runs_on_cpu(capsys):
  """bench/ncu_probe.py (the calls ncu profiles) runs in interpret mode, and --time prints the harness row."""
  import ncu_probe  # noqa: PLC0415 -- bench/ is on sys.path in these tests
  import pytest  # noqa: PLC0415
  before = ncu_probe.configs.gpu_name
  ncu_probe.main(["--shapes", "32x256", "--m", "1"])
  ncu_probe.main(["--shapes", "32x256", "--m", "1", "--time"])
  out = capsys.readouterr().out
  assert "harness us: 32x256 | bf16 " in out and "w8a16" in out and "w4a8" in out
  assert ncu_probe.configs.gpu_name is before  # the H100 table override is undone after main
  with pytest.raises(SystemExit):
    ncu_probe.main(["--shapes", "4096"])
