"""The Hopper (Mosaic GPU) W4A16 kernel: interpret mode on CPU, natively on an sm_90 GPU."""

import jax
import jax.numpy as jnp
import pytest

from kernel_testutil import keys, mosaic_gpu_test_mode, rel_err
from mixq_jax.pallas_kernels import w4a16_matmul_reference
from mixq_jax.pallas_kernels.int4_pack import quantize_w4_asym
from mixq_jax.pallas_kernels.w4a16_matmul_hopper import W4A16HopperConfig, w4a16_matmul_hopper
from mixq_jax.pallas_kernels.xla_matmuls import w4a16_matmul_xla

INTERPRET = mosaic_gpu_test_mode()
SMALL = W4A16HopperConfig(tile_n=64, tile_m=64, stages=2, grid_tile_width=2)


def _operands(m, n, k, group=128, bias=False):
  kx, kw, kb = keys(3)
  x = jax.random.normal(kx, (m, k), jnp.bfloat16)
  w_q, s, z = quantize_w4_asym(jax.random.normal(kw, (n, k)), group=group)
  b = jax.random.normal(kb, (n,), jnp.bfloat16) if bias else None
  return x, w_q, s, z, b


@pytest.mark.parametrize("m,n,k,group,bias,sms", [(64, 128, 128, 128, False, 1), (100, 256, 576, 128, True, 3),
                                                   (3, 128, 1000, 256, False, 2)])
def test_against_xla_program(m, n, k, group, bias, sms):
  """Same rounding as XLA's program (W in bf16, float32 accumulation): agree to float32 summation order;
  ragged M (padded rows), K not a multiple of 128 (zero-padded), groups of 1 and 2 pack blocks."""
  x, w_q, s, z, b = _operands(m, n, k, group, bias)
  got = w4a16_matmul_hopper(x, w_q, s, z, b, out_dtype=jnp.float32, config=SMALL, interpret=INTERPRET, num_sms=sms)
  assert got.shape == (m, n) and got.dtype == jnp.float32
  assert rel_err(got, w4a16_matmul_xla(x, w_q, s, z, b, out_dtype=jnp.float32)) < 1e-5
  # W rounded to bf16 first: within bf16 rounding of the exact (float32) product
  assert rel_err(got, w4a16_matmul_reference(x, w_q, s, z, b, out_dtype=jnp.float32)) < 8e-3


@pytest.mark.parametrize("m,k,group,split,tile_m,bias", [(5, 512, 128, 4, 16, False), (20, 1000, 256, 2, 16, True),
                                                         (40, 384, 128, 3, 32, False)])
def test_split_k(m, k, group, split, tile_m, bias):
  """Decode-size tiles with K split into ranges of whole groups, summed by XLA (and the bias added once)."""
  x, w_q, s, z, b = _operands(m, 256, k, group, bias)
  cfg = W4A16HopperConfig(tile_n=64, tile_m=tile_m, stages=3, grid_tile_width=2, epi_tile_n=tile_m, split_k=split)
  got = w4a16_matmul_hopper(x, w_q, s, z, b, out_dtype=jnp.float32, config=cfg, interpret=INTERPRET, num_sms=3)
  assert got.shape == (m, 256)
  assert rel_err(got, w4a16_matmul_xla(x, w_q, s, z, b, out_dtype=jnp.float32)) < 1e-5


def test_bf16_out_default():
  x, w_q, s, z, b = _operands(70, 128, 256)
  got = w4a16_matmul_hopper(x, w_q, s, z, config=SMALL, interpret=INTERPRET, num_sms=2)
  assert got.dtype == jnp.bfloat16 and got.shape == (70, 128)
  assert rel_err(got, w4a16_matmul_reference(x, w_q, s, z)) < 1e-2


def test_rejects():
  x, w_q, s, z, _ = _operands(8, 96, 256)
  with pytest.raises(ValueError, match="N=96 must divide by 128"):
    w4a16_matmul_hopper(x, w_q, s, z, config=SMALL, interpret=True)
  x, w_q, s, z, _ = _operands(8, 128, 256)
  with pytest.raises(ValueError, match="x must be bf16"):
    w4a16_matmul_hopper(x.astype(jnp.float16), w_q, s, z, config=SMALL, interpret=True)
  with pytest.raises(ValueError, match="expected K <= Kp=256"):
    w4a16_matmul_hopper(jnp.ones((8, 384), jnp.bfloat16), w_q, s, z, config=SMALL, interpret=True)
  with pytest.raises(ValueError, match=r"K=100.*\(128, 256\]"):  # shorter than the weights' K
    w4a16_matmul_hopper(jnp.ones((8, 100), jnp.bfloat16), w_q, s, z, config=SMALL, interpret=True)
  with pytest.raises(ValueError, match="scale / zero"):
    w4a16_matmul_hopper(x, w_q, s[:, :64], z, config=SMALL, interpret=True)
  with pytest.raises(ValueError, match="G=2 groups by split_k=4"):
    w4a16_matmul_hopper(x, w_q, s, z, config=W4A16HopperConfig(64, 64, 2, split_k=4), interpret=True)


@pytest.mark.skipif(INTERPRET, reason="full-size tiles: native GPU only")
@pytest.mark.parametrize("m,n,k", [(2048, 4096, 4096), (1000, 11008, 4096), (513, 4096, 11008)])
def test_default_config_native(m, n, k):
  x, w_q, s, z, _ = _operands(m, n, k)
  got = w4a16_matmul_hopper(x, w_q, s, z, out_dtype=jnp.float32)
  assert rel_err(got, w4a16_matmul_xla(x, w_q, s, z, out_dtype=jnp.float32)) < 1e-5


def test_dispatch_from_hopper_min_m(monkeypatch):
  """w4a16_matmul on sm_90 runs this kernel for bf16 x from HOPPER_MIN_M on where the shape fits (with
  pick_config's tiles), the Triton kernel below it; where N or the dtype does not fit, the Triton kernel to
  TRITON_MAX_M and XLA's program above (checked on the lowered programs)."""
  import importlib  # noqa: PLC0415

  from mixq_jax.pallas_kernels import w4a16_matmul  # noqa: PLC0415

  hopper_mod = importlib.import_module("mixq_jax.pallas_kernels.w8a8_matmul_hopper")
  w4a16_mod = importlib.import_module("mixq_jax.pallas_kernels.w4a16_matmul")
  monkeypatch.setattr(hopper_mod, "is_hopper", lambda: True)
  monkeypatch.setattr(hopper_mod, "device_sm_count", lambda: 132)
  monkeypatch.setattr(w4a16_mod, "device_sm_count", lambda: 132)
  assert w4a16_mod.HOPPER_MIN_M <= w4a16_mod.TRITON_MAX_M

  def backend(m, n, dtype=jnp.bfloat16):
    x, w_q, s, z, _ = _operands(m, n, 256)
    text = jax.jit(lambda *a: w4a16_matmul(*a)).trace(x.astype(dtype), w_q, s, z).lower(
        lowering_platforms=("cuda",)).as_text()
    return "mosaic_gpu" if "mosaic_gpu" in text else "triton" if "triton" in text else "xla"

  lo = w4a16_mod.HOPPER_MIN_M
  assert backend(1, 256) == "triton"
  assert backend(lo - 1, 256) == "triton"
  assert backend(lo, 256) == "mosaic_gpu"  # K split: 2 x 128-row tiles, G = 2
  assert backend(300, 384) == "mosaic_gpu"  # N not a multiple of 256: 64-row warpgroup tiles
  assert backend(300, 192) == "xla"  # N not a multiple of 2 x 64
  assert backend(40, 192) == "triton"  # ... and up to TRITON_MAX_M the Triton kernel
  assert backend(300, 256, jnp.float16) == "xla"
  monkeypatch.setattr(w4a16_mod, "HOPPER_MIN_M", None)  # (shapes not traced above: jit caches by shape)
  assert backend(lo + 1, 256) == "triton"
  assert backend(301, 256) == "xla"


def test_pick_config():
  """Every config pick_config returns fits the shape it was picked for and shared memory."""
  from mixq_jax.pallas_kernels.w4a16_matmul_hopper import fit_stages, pick_config, supported  # noqa: PLC0415

  for m in (1, 16, 17, 33, 64, 65, 256, 300, 2048, 4096):
    for n, kp in ((4096, 4096), (11008, 4096), (4096, 11008), (1024, 8192), (384, 640), (28672, 8192)):
      cfg = pick_config(m, n, kp, 128)
      assert supported(n, kp, 128, cfg), (m, n, kp, cfg)
      assert fit_stages(cfg).stages >= 2
      if m <= 64:  # decode: the token tile covers m, and K splits fill the SMs where the groups allow
        assert cfg.tile_m >= min(m, 16) and cfg.tile_m <= 64
        assert (kp // 128) % cfg.split_k == 0
  assert pick_config(16, 4096, 4096, 128).split_k * 32 >= 132


def test_fit_stages():
  """Pipeline depth cut to the 227 KB of shared memory (per stage: x 256 B x tile_m, packed words, vectors)."""
  from mixq_jax.pallas_kernels.w4a16_matmul_hopper import fit_stages  # noqa: PLC0415

  assert fit_stages(W4A16HopperConfig(64, 128, 4)).stages == 4
  assert fit_stages(W4A16HopperConfig(128, 128, 4)).stages == 3
  assert fit_stages(W4A16HopperConfig(64, 256, 4)).stages == 2
  with pytest.raises(ValueError, match="does not fit"):
    fit_stages(W4A16HopperConfig(64, 512, 4))
