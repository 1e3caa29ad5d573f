"""bench/inspect_kernels.py: the kernels lower for CUDA on any machine and their Triton IR is
captured; where the Triton compiler is installed, the sm_90 machine code is counted."""

import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import inspect_kernels  # noqa: E402


def test_ttir_captured_for_every_family():
  rows = inspect_kernels.main(["--kernels", "w8a8,w8a16,w4a16,w4a8,mx", "--ms", "16,256", "--n", "256", "--k", "256",
                               "--ttir-only"])
  assert [(r["kernel"], r["m"]) for r in rows] == [(k, m) for k in ("w8a8", "w8a16", "w4a16", "w4a8", "mx")
                                                    for m in (16, 256)]
  for r in rows:
    assert "error" not in r, r
    assert r["ttir_ops"] >= 1 and r["num_warps"] in (1, 2, 4, 8, 16) and r["num_stages"] >= 1, r


def test_explicit_config_reaches_the_kernel():
  rows = inspect_kernels.main(["--kernels", "w8a8", "--ms", "256", "--n", "256", "--k", "256", "--ttir-only",
                               "--config", "64,64,64,2,2"])
  assert (rows[0]["num_warps"], rows[0]["num_stages"]) == (2, 2)
  assert inspect_kernels.parse_config("16,64,256,4,4,4").split_k == 4
  assert inspect_kernels.parse_config("16,64,256,4,4").split_k == 1


def test_fp8_dots_allow_hopper_wgmma():
  """JAX leaves Triton's maxNumImpreciseAcc at 0, which keeps FP8 dots off the FP8 tensor cores;
  mixq_jax.pallas_kernels._triton sets it on FP8 x FP8 dots only."""
  from mixq_jax.pallas_kernels import _triton

  assert _triton.FP8_WGMMA
  fp8 = inspect_kernels.lower_to_ttir("mxfp8", 256, 256, 256, None)[-1]["ttir"]
  bf16 = inspect_kernels.lower_to_ttir("mx", 256, 256, 256, None)[-1]["ttir"]
  int8 = inspect_kernels.lower_to_ttir("w8a8", 256, 256, 256, None)[-1]["ttir"]
  fp8_dots = [ln for ln in fp8.splitlines() if "tt.dot" in ln]
  assert fp8_dots and all("maxNumImpreciseAcc = 32" in ln and "f8E4M3FN" in ln for ln in fp8_dots)
  assert "maxNumImpreciseAcc" not in bf16 and "maxNumImpreciseAcc" not in int8


def test_bad_arguments():
  with pytest.raises(SystemExit, match="unknown kernels"):
    inspect_kernels.main(["--kernels", "w3a3", "--ttir-only"])
  with pytest.raises(SystemExit, match="BM,BN,BK"):
    inspect_kernels.main(["--kernels", "w8a8", "--config", "1,2", "--ttir-only"])


def test_machine_code_counts():
  pytest.importorskip("triton")
  rows = inspect_kernels.main(["--kernels", "w8a8,w8a16,mxfp8", "--ms", "16,256", "--n", "512", "--k", "512"])
  by = {(r["kernel"], r["m"]): r for r in rows}
  assert by[("mxfp8", 256)]["QGMMA"] > 0  # FP8 wgmma, once maxNumImpreciseAcc is set
  assert by[("w8a8", 16)]["IMMA"] > 0  # M = 16: Ampere-style mma.sync
  assert by[("w8a8", 256)]["IGMMA"] > 0 and by[("w8a16", 256)]["HGMMA"] > 0  # large M: Hopper wgmma
  assert all(r["regs"] and r["regs"] <= 255 for r in rows)
