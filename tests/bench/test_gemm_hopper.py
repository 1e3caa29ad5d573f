"""Every Mosaic GPU config that bench/gemm_hopper.py sweeps, and the dispatch defaults, lower for
CUDA on any machine: shared-memory overflows and layout errors show up here, not in device time."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import gemm_hopper  # noqa: E402
from mixq_jax.pallas_kernels import HopperConfig, w8a8_matmul_hopper, w8a8o16_matmul_hopper  # noqa: E402
from mixq_jax.pallas_kernels.w8a8_matmul_hopper import _fit_smem, fits  # noqa: E402

S = jax.ShapeDtypeStruct


def _lower(name, cfg, m=4096, n=11008, k=4096, c=128):
  args = [S((m, k), jnp.int8), S((m,), jnp.float32), S((n, k), jnp.int8), S((n,), jnp.float32)]
  if name.startswith("o16"):
    args += [S((m, c), jnp.bfloat16), S((n, c), jnp.bfloat16), S((), jnp.int32)]
    fn = lambda *a: w8a8o16_matmul_hopper(*a, config=cfg, num_sms=132)
  else:
    fn = lambda *a: w8a8_matmul_hopper(*a, config=cfg, num_sms=132)
  return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("name", sorted(gemm_hopper.CONFIGS))
def test_sweep_config_lowers(name):
  assert "mosaic_gpu" in _lower(name, gemm_hopper.CONFIGS[name])


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("out_dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("name", ["w8a8", "o16", "o16_rank1"])
def test_smem_model_matches_mosaic(name, out_dtype, bias):
  """`fits` (which the dispatch consults) agrees with Mosaic GPU's own shared-memory check: what it
  accepts lowers at a ragged M; what it rejects raises a clear error instead of a lowering failure."""
  m, n, k, cfg = 1000, 4096, 4096, HopperConfig()
  args = [S((m, k), jnp.int8), S((m,), jnp.float32), S((n, k), jnp.int8), S((n,), jnp.float32)]
  if name.startswith("o16"):
    args += [S((m, 128), jnp.bfloat16), S((n, 128), jnp.bfloat16), S((), jnp.int32)]
    args.append(S((n,), jnp.bfloat16) if bias else None)
    if name == "o16_rank1":
      args += [S((m,), jnp.float32), S((n,), jnp.float32)]
    fn = lambda *a: w8a8o16_matmul_hopper(*a, out_dtype=out_dtype, config=cfg, num_sms=132)
  else:
    fn = lambda *a: w8a8_matmul_hopper(*a, out_dtype=out_dtype, config=cfg, num_sms=132)
    if bias:
      args.append(S((n,), jnp.bfloat16))
  if fits(cfg, out_dtype, bias, rank1=name == "o16_rank1"):
    assert "mosaic_gpu" in jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
  else:
    with pytest.raises(ValueError, match="does not fit shared memory"):
      jax.jit(fn).trace(*args)


def test_measured_defaults_keep_their_stages():
  """The configs timed in BENCHMARKS.md: 128 x 256 tiles at 4 stages (W8A8 and W8A8O16, whose outlier
  columns take no shared memory of their own), 3 with a bias or QUIK's rank-1 vectors."""
  assert _fit_smem(HopperConfig(), 2, False) == HopperConfig()
  assert _fit_smem(HopperConfig(), 2, True) == HopperConfig(stages=3)
  assert _fit_smem(HopperConfig(), 2, False, rank1=True) == HopperConfig(stages=3)
