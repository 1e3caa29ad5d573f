"""bench/gemm4.py on the CPU (kernels in interpret mode): the per-config sweep and its records."""

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))

import gemm4  # noqa: E402


def test_parse_configs():
  a, b = gemm4.parse_configs("16,32,256,4,4; 16,64,1024,4,3,2")
  assert (a.block_n, a.block_k, a.num_stages, a.split_k) == (32, 256, 4, 1)
  assert (b.block_n, b.block_k, b.split_k) == (64, 1024, 2)
  assert gemm4.parse_configs(None) == []
  with pytest.raises(SystemExit, match="BM,BN,BK"):
    gemm4.parse_configs("16,32,256")


def test_sweep_records_every_config(tmp_path, monkeypatch):
  out = tmp_path / "g4.json"
  monkeypatch.setattr(sys, "argv", ["gemm4.py", "--models", "tiny", "--ms", "5", "--samples", "1",
                                    "--kernels", "w4a8", "--configs", "64,64,128,4,2", "--json", str(out)])
  gemm4.main()
  recs = json.loads(out.read_text())["records"]
  assert [r["kernel"] for r in recs] == ["w4a8", "w4a8"]
  assert recs[1]["config"]["block_m"] == 16 and recs[1]["config"]["block_n"] == 64  # block_m clipped to M's bucket
  assert all(r["max_rel_err"] == 0 and r["time_us"] > 0 for r in recs)  # integer path: exact


def test_recorded_config_is_the_kernels_own(monkeypatch):
  """pk_select records what the wrapper runs: w4a8g has its own table entries (it used to show w4a8's)."""
  from mixq_jax.pallas_kernels import _w4_common, configs, tuned_table  # noqa: PLC0415

  gpu = configs.gpu_name()
  g = {"block_m": 16, "block_n": 32, "block_k": 256, "num_warps": 4, "num_stages": 4, "split_k": 4}
  p = {"block_m": 16, "block_n": 64, "block_k": 512, "num_warps": 4, "num_stages": 3, "split_k": 2}
  monkeypatch.setattr(tuned_table, "TABLE", {f"w4a8g|{gpu}|16|*|*": g, f"w4a8|{gpu}|16|*|*": p})
  assert gemm4.pk_select("w4a8g", 16, 4096, 4096) == _w4_common.KernelConfig(**g)
  assert gemm4.pk_select("w4a8g_triton", 1, 4096, 4096) == _w4_common.KernelConfig(**g)
  assert gemm4.pk_select("w4a8", 16, 4096, 4096) == _w4_common.KernelConfig(**p)


def test_dispatch_names_the_program_the_wrapper_runs(monkeypatch):
  """On sm_90 the records name the Mosaic GPU / XLA paths, with the Hopper config, not the Triton one."""
  import importlib  # noqa: PLC0415

  hopper = importlib.import_module("mixq_jax.pallas_kernels.w8a8_matmul_hopper")
  monkeypatch.setattr(hopper, "is_hopper", lambda: True)
  monkeypatch.setattr(hopper, "device_sm_count", lambda: 132)
  monkeypatch.setattr(gemm4.gemm, "INTERPRET", False)
  path, cfg = gemm4.dispatch("w4a8", 1024, 8192, 8192)
  assert "w4a8_matmul_hopper" in path and cfg["tile_k"] == 128
  assert "unpack" in gemm4.dispatch("w4a8", 2048, 8192, 8192)[0]
  assert "unpack" in gemm4.dispatch("w4a8g", 1024, 8192, 8192)[0]
  assert "w8a8o16" in gemm4.dispatch("w4a4o16", 4096, 8192, 8192)[0]
  assert gemm4.dispatch("w4a8", 16, 8192, 8192)[0] == "triton"
  assert gemm4.dispatch("w4a8_triton", 1024, 8192, 8192)[0] == "triton"
  assert gemm4.dispatch("mx", 256, 8192, 8192) == ("xla: decode + bf16 GEMM", None)
  path, cfg = gemm4.dispatch("w4a16", 2048, 8192, 8192)
  assert path == "mosaic: w4a16_matmul_hopper" and cfg["tile_m"] == 256
  assert gemm4.dispatch("w4a16", 2048, 4096, 4096)[1]["tile_n"] == 128
  assert gemm4.dispatch("w4a16", 1024, 4096 + 64, 4096) == ("xla: dequantize + bf16 GEMM", None)
  monkeypatch.setattr(hopper, "is_hopper", lambda: False)
  assert gemm4.dispatch("w4a8", 1024, 8192, 8192)[0] == "triton"


def test_tune_writes_tuned_entries(tmp_path, monkeypatch):
  out = tmp_path / "tuned_table.py"
  monkeypatch.setenv("TUNED_TABLE_OUT", str(out))
  monkeypatch.setattr(gemm4, "TUNE_CANDIDATES", {"w4a8": [(16, 32, 128, 4, 2, 1), (16, 16, 128, 4, 2, 2)]})
  from mixq_jax.pallas_kernels import tuned_table  # noqa: PLC0415
  monkeypatch.setattr(tuned_table, "PROVENANCE", dict(tuned_table.PROVENANCE))
  monkeypatch.setattr(sys, "argv", ["gemm4.py", "--tune", "--models", "tiny", "--ms", "16", "--samples", "1",
                                    "--kernels", "w4a8,mx"])
  gemm4.main()
  from mixq_jax.pallas_kernels import configs  # noqa: PLC0415
  text, gpu = out.read_text(), configs.gpu_name()
  assert f"'w4a8|{gpu}|16|256|256'" in text and f"'w4a8|{gpu}|16|*|*'" in text and f"'w4a8|{gpu}':" in text


def test_device_time_records_a_profile(tmp_path, monkeypatch, capsys):
  """--device-time profiles every call: device time and kernels per call go into the JSON and a table."""
  out = tmp_path / "g4.json"
  monkeypatch.setattr(gemm4, "DEVICE_TIME", False)
  monkeypatch.setattr(gemm4.gemm, "DEVICE_TIME", False)
  monkeypatch.setattr(sys, "argv", ["gemm4.py", "--models", "tiny", "--ms", "1", "--samples", "1",
                                    "--kernels", "w4a8", "--device-time", "--json", str(out)])
  gemm4.main()
  (rec,) = json.loads(out.read_text())["records"]
  assert rec["device_us"] > 0 and rec["kernels_per_call"] > 0 and rec["bf16_device_us"] > 0
  assert "| tiny/tiny | 1 | w4a8 |" in capsys.readouterr().out


def test_mosaic_kind_takes_no_config_and_names_its_device():
  """w4a16_mosaic calls the Mosaic GPU kernel at its default: no --configs sweep, and on the CPU a clear error."""
  from mixq_jax.pallas_kernels import KernelConfig  # noqa: PLC0415

  assert "w4a16_mosaic" in gemm4.NO_CONFIG_KINDS and "w4a16_mosaic" not in gemm4.XLA_KINDS
  with pytest.raises(ValueError, match="takes no config"):
    gemm4.run_one("w4a16_mosaic", 16, 256, 256, 1, KernelConfig())
  if gemm4.gemm.INTERPRET:
    with pytest.raises(ValueError, match="sm_90"):
      gemm4.run_one("w4a16_mosaic", 16, 256, 256, 1)
