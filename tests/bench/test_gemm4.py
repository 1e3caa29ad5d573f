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
