"""Tensor parallelism: sharded and unsharded logits agree for bf16 and every 8-bit scheme, tp 2/4/8,
on 8 host CPU devices (a subprocess, since the device count is fixed when jax starts), on the XLA path
and on the Pallas kernels (interpret mode) running under shard_map."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mixq_jax import sharding


def test_specs_follow_megatron():
  v = {"params": {"layers_0": {"self_attn": {
      "q_proj": {"w_q": np.zeros((16, 8)), "s_w": np.zeros(16), "w_o": np.zeros((16, 4)), "bias": np.zeros(16)},
      "o_proj": {"w_q": np.zeros((8, 16)), "s_w": np.zeros(8), "w_o": np.zeros((8, 4))},
      "o_in": {"smooth_inv": np.zeros(16)}}}, "embed": np.zeros((10, 8))},
      "outliers": {"layers_0": {"self_attn": {"o_in": {"idx": np.zeros(4, np.int32)}}}}}
  s = sharding.variable_specs(v, 2)
  q, o = s["params"]["layers_0"]["self_attn"]["q_proj"], s["params"]["layers_0"]["self_attn"]["o_proj"]
  assert q == {"w_q": P("tp", None), "s_w": P("tp"), "w_o": P("tp", None), "bias": P("tp")}
  assert o == {"w_q": P(None, "tp"), "s_w": P(), "w_o": P()}  # outlier columns replicated
  assert s["params"]["layers_0"]["self_attn"]["o_in"]["smooth_inv"] == P("tp")
  assert s["params"]["embed"] == P() and s["outliers"]["layers_0"]["self_attn"]["o_in"]["idx"] == P()
  assert sharding.variable_specs(v, 3)["params"]["layers_0"]["self_attn"]["q_proj"]["w_q"] == P()  # 16 % 3


def test_errors():
  with pytest.raises(ValueError, match="devices"):
    sharding.make_mesh(10_000)


def test_sharded_equals_unsharded():
  root = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(root))
  proc = subprocess.run([sys.executable, str(root / "tests" / "tp_worker.py")], capture_output=True, text=True,
                        env=env, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  data = json.loads(proc.stdout.strip().splitlines()[-1])
  results = data["models"]
  assert len(results) == 2 * 5 * 3 + 2 * 4 * 2
  for r in results:
    assert r["n_sharded_leaves"] > 0, r
    assert r["rel_err"] < 1e-4, r
    assert r["gen_equal"] in (None, True), r
    if r["impl"] == "interpret":  # the kernels ran, each inside a shard_map; row layers end in a psum
      assert r["pallas_calls"] > 0 and r["shard_maps"] >= r["pallas_calls"] and r["psums"] > 0, r
    else:
      assert r["pallas_calls"] == 0 and r["shard_maps"] == 0, r
  assert sum(r["gen_equal"] is True for r in results) == 4
  shapes = data["local_shapes"]  # QuantDense(K=128, N=64) at tp 4, M = 5
  assert shapes["column"]["w_q"] == [16, 128] and shapes["column"]["x_q"] == [5, 128]
  assert shapes["column"]["out_spec"] == str(P(None, "tp"))
  assert shapes["row"]["w_q"] == [64, 32] and shapes["row"]["x_q"] == [5, 32]
  assert shapes["row"]["out_spec"] == str(P())
  for role in ("column", "row"):
    assert shapes[role]["rel_err"] < 2e-2, shapes  # bf16 outputs; the row sum is in float32

