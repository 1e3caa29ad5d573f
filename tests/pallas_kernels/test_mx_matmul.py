import jax
import numpy as np
import jax.numpy as jnp
import pytest

from mixq_jax.pallas_kernels import KernelConfig, mx, mx_matmul, mx_matmul_reference
from kernel_testutil import INTERPRET, keys, rel_err

SMALL = KernelConfig(block_m=16, block_n=32, block_k=128, num_warps=4, num_stages=2, group_m=2)


@pytest.mark.parametrize("m,k,k6", [(1, 256, 0), (7, 576, 64), (33, 320, 32)])
@pytest.mark.parametrize("use_fp8", [False, True])
def test_mx_matmul(m, k, k6, use_fp8):
  n = 48
  kx, kw = keys(2)
  x = jax.random.normal(kx, (m, k), jnp.bfloat16)
  w = jax.random.normal(kw, (n, k))
  wq = mx.mx_quantize_weight(w, k6)
  x_e, x_s = mx.mx_quantize_act(x, k6)
  got = mx_matmul(x_e, x_s, wq, use_fp8=use_fp8, out_dtype=jnp.float32, interpret=INTERPRET,
                  config=SMALL)
  want = mx_matmul_reference(x_e, x_s, wq, out_dtype=jnp.float32)
  assert got.shape == (m, n)
  assert rel_err(got, want) < 1e-6  # exact products; float32 summation order only
  # The reference is the product of the MX-rounded operands (in the padded layout).
  k4p, _ = mx.split_layout(k, k6)
  xr = jnp.concatenate([mx.fake_quantize(jnp.pad(x[:, : k - k6], ((0, 0), (0, k4p - k + k6))),
                                         "fp8")] +
                       ([mx.fake_quantize(x[:, k - k6:], "fp8")] if k6 else []), axis=1)
  wr = mx.dequantize_weight(wq)
  assert rel_err(want, xr[:, : wr.shape[1]] @ wr.T) < 1e-6


def test_mx_matmul_default_config_bf16_out():
  kx, kw = keys(2)
  x = jax.random.normal(kx, (20, 256), jnp.bfloat16)
  wq = mx.mx_quantize_weight(jax.random.normal(kw, (64, 256)))
  x_e, x_s = mx.mx_quantize_act(x)
  got = mx_matmul(x_e, x_s, wq, interpret=INTERPRET)
  assert got.dtype == jnp.bfloat16
  assert rel_err(got, mx_matmul_reference(x_e, x_s, wq)) < 4e-3


def test_mx_matmul_layout_mismatch():
  wq = mx.mx_quantize_weight(jnp.ones((32, 256)), k6=64)
  x_e, x_s = mx.mx_quantize_act(jnp.ones((2, 256)))  # no MXFP6 split: wrong layout
  with pytest.raises(ValueError, match="mx_quantize_act"):
    mx_matmul(x_e, x_s, wq)


def test_fp4_bit_decode_is_exact():
  """The bf16 path's integer E2M1 decode equals value * 2^(s - 127) for every code and every
  E8M0 code in its exact range (2..252), and gives 0 below it."""
  import sys  # noqa: PLC0415  (the package re-exports the function under the module's name)

  mm = sys.modules["mixq_jax.pallas_kernels.mx_matmul"]
  codes = jnp.tile(jnp.arange(16, dtype=jnp.int8)[None, :], (256, 1))
  ws = jnp.arange(256, dtype=jnp.int32).astype(jnp.uint8)[:, None]
  got = np.asarray(mm._fp4_scaled_bf16(codes, ws).astype(jnp.float32))
  want = np.asarray(mx.codes_to_values(codes.astype(jnp.uint8), "fp4")) * np.exp2(
      np.arange(256, dtype=np.float64) - 127)[:, None]
  np.testing.assert_array_equal(got[2:253], want[2:253].astype(np.float32))
  np.testing.assert_array_equal(got[:2], 0.0)


@pytest.mark.parametrize("pos", [0, 4, 8, 12])
def test_fp4_word_pairs_exact(pos):
  """The word-wise decode gives every E2M1 code's value times 2^-14 in fp16 (code 1 as an fp16
  subnormal, which widens to a normal float32 on any backend), for the codes at bits [pos, pos + 4) of
  both half words, low half word first."""
  import sys  # noqa: PLC0415

  mm = sys.modules["mixq_jax.pallas_kernels.mx_matmul"]
  codes = np.arange(16, dtype=np.uint32)
  noise = np.uint32(0x5A5A5A5A) & ~np.uint32((0xF << pos) | (0xF << (pos + 16)))  # other nibbles: junk
  p = jnp.asarray((codes << pos) | (codes[::-1] << (pos + 16)) | noise, jnp.uint32)[:, None]  # [16, 1]
  got = np.asarray(mm._fp4_word_pairs(p, pos).astype(jnp.float32)) * 2.0**14  # [16, 2]
  want = np.asarray(mx.codes_to_values(jnp.asarray(codes, jnp.uint8), "fp4"))
  np.testing.assert_array_equal(got[:, 0], want)
  np.testing.assert_array_equal(got[:, 1], want[::-1])


@pytest.mark.parametrize("decode", ["words", "bits", "float"])
def test_mx_matmul_fp4_decodes_agree(decode, kernel_flag):
  """Every E2M1 decode of the 16-bit path matches the reference, with scales across a wide range."""
  import sys  # noqa: PLC0415

  kernel_flag(sys.modules["mixq_jax.pallas_kernels.mx_matmul"], "FP4_DECODE", decode)
  kx, kw, ks = keys(3)
  m, n, k = 5, 32, 384
  x = jax.random.normal(kx, (m, k), jnp.bfloat16) * jnp.exp2(jax.random.randint(ks, (1, k), -12, 12)).astype(jnp.bfloat16)
  w = jax.random.normal(kw, (n, k)) * jnp.exp2(jnp.arange(k) % 24 - 16.0)[None, :]
  wq = mx.mx_quantize_weight(w)
  x_e, x_s = mx.mx_quantize_act(x)
  got = mx_matmul(x_e, x_s, wq, out_dtype=jnp.float32, interpret=INTERPRET, config=SMALL)
  assert rel_err(got, mx_matmul_reference(x_e, x_s, wq, out_dtype=jnp.float32)) < 1e-6


@pytest.mark.parametrize("k,k6,split_k", [(512, 0, 2), (640, 64, 2), (640, 96, 4), (384, 32, 8)])
@pytest.mark.parametrize("use_fp8", [False, True])
def test_mx_matmul_split_k(k, k6, split_k, use_fp8):
  """K slices (even, uneven, more slices than steps) sum to the unsplit product; the MXFP6 blocks
  go with the last slice. 5 MXFP4 pack blocks over 2 or 4 slices leave a short last slice."""
  kx, kw = keys(2)
  m, n = 3, 32
  x = jax.random.normal(kx, (m, k), jnp.bfloat16)
  wq = mx.mx_quantize_weight(jax.random.normal(kw, (n, k)), k6)
  x_e, x_s = mx.mx_quantize_act(x, k6)
  cfg = KernelConfig(block_m=16, block_n=16, block_k=128, num_warps=4, num_stages=2, split_k=split_k)
  got = mx_matmul(x_e, x_s, wq, use_fp8=use_fp8, out_dtype=jnp.float32, interpret=INTERPRET, config=cfg)
  want = mx_matmul_reference(x_e, x_s, wq, out_dtype=jnp.float32)
  assert got.shape == (m, n)
  assert rel_err(got, want) < 1e-6


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("split_k", [1, 2])
def test_mx_matmul_scale_prefetch(prefetch, split_k, kernel_flag):
  """The words path with and without the next step's scale words loaded one step ahead (uneven slices too:
  5 pack blocks over 2 slices of 3 and 2), against the reference."""
  import sys  # noqa: PLC0415

  kernel_flag(sys.modules["mixq_jax.pallas_kernels.mx_matmul"], "PREFETCH_SCALES", prefetch)
  kx, kw = keys(2)
  m, n, k = 3, 32, 640
  x_e, x_s = mx.mx_quantize_act(jax.random.normal(kx, (m, k), jnp.bfloat16))
  wq = mx.mx_quantize_weight(jax.random.normal(kw, (n, k)))
  cfg = KernelConfig(block_m=16, block_n=16, block_k=128, num_warps=4, num_stages=2, split_k=split_k)
  got = mx_matmul(x_e, x_s, wq, out_dtype=jnp.float32, interpret=INTERPRET, config=cfg)
  assert rel_err(got, mx_matmul_reference(x_e, x_s, wq, out_dtype=jnp.float32)) < 1e-6
