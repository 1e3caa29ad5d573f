"""Large-M 4-bit GEMMs on Hopper: int4 unpacked to int8 by XLA, then the Mosaic GPU 8-bit kernels
(or, for per-channel w4a8 at M < FUSED_MAX_M, unpacked inside the kernel).

Shape letters: M tokens, N output features, Kp = K padded to 128, C outlier capacity.

Why: at large M these GEMMs are compute-bound and Hopper has no int4 tensor cores, so the int8
wgmma does the work either way. The Triton 4-bit tile loops unpack in registers next to their
accumulator and spill (bench/inspect_kernels.py); on an H100 at M = 4096 on 70B's 8192 x 8192 they
ran at 0.67x (w4a8) and 0.37x (w4a4o16) of bf16, while the Mosaic GPU W8A8 kernel (TMA + wgmma,
w8a8_matmul_hopper.py) runs 1.88x there. Unpacking is one XLA pass over the packed operand (read
half a byte, write one byte per value, on 32-bit words: `int4_pack.unpack_int4_words`), small next
to the GEMM from M = 2048 on; the packed weights stay what is stored, the int8 copy is a temporary of
the call. Between M = 1024 and 2048 per-channel w4a8 saves that pass: its kernel streams the packed
tiles and each consumer warpgroup unpacks its tile into shared memory before the wgmma.

Exact vs rounded: the same as the 8-bit kernels. The int32 accumulator is exact, and so are
int4 -> int8 and QQQ's q4 * s_g. For QUIK's asymmetric activations, the zero-point term
m_x (s_w wsum) is a rank-1 addition in the kernel's float32 epilogue.
"""

import importlib

import jax.numpy as jnp

from mixq_jax.pallas_kernels.int4_pack import unpack_int4_words

# The module itself: the package re-exports its function of the same name over the attribute.
_hopper = importlib.import_module("mixq_jax.pallas_kernels.w8a8_matmul_hopper")
_hopper_o16 = importlib.import_module("mixq_jax.pallas_kernels.w8a8o16_matmul_hopper")


# Per-channel products with fewer tokens than this run `w4a8_matmul_hopper`, which streams the packed
# weights and unpacks them in shared memory, instead of the XLA unpack + W8A8. H100, 2026-12-06
# (BENCHMARKS.md): at M = 1024 131.9-135.8 against 155.8 us (8192 x 8192), 112.9 against 129.1
# (11008 x 4096), 430.7 against 511.0 (8192 x 28672), 42.3 against 42.1 (4096 x 4096); at M = 2048
# the unpack pass is the smaller cost (269.1 against 245.9 at 8192 x 8192), and the in-kernel g128
# multiply-add lost at every M measured (593.0 against 442.8 at M = 4096).
FUSED_MAX_M = 2048


def w4a8(x_q, s_x, w_q, s_w, bias, s_g, *, out_dtype, config, interpret=False, num_sms=None):
  """w4a8_matmul (per-channel, or g128 with s_g [N, G]) on the Mosaic GPU kernels; x_q [M, Kp]: per-channel
  below FUSED_MAX_M tokens on packed weights (w4a8_matmul_hopper), otherwise on an int8 copy (W8A8)."""
  if s_g is None and x_q.shape[0] < FUSED_MAX_M:
    return _hopper.w4a8_matmul_hopper(x_q, s_x, w_q, s_w, bias, out_dtype=out_dtype, config=config,
                                      interpret=interpret, num_sms=num_sms)
  w8 = unpack_int4_words(w_q, s_g)  # [N, Kp] int8; QQQ g128: q4 * s_g, an exact int8
  return _hopper.w8a8_matmul_hopper(x_q, s_x, w8, s_w, bias, out_dtype=out_dtype, config=config,
                                    interpret=interpret, num_sms=num_sms)


def w4a4o16(x_q, s_x, w_q, s_w, x_o, w_o, count, bias, m_x, wsum, *, out_dtype, config, interpret=False,
            num_sms=None):
  """w4a4o16_matmul on the Mosaic GPU W8A8O16 kernel (x_q packed [M, Kp/2]; w8a8o16_matmul_hopper.py)."""
  x8, w8 = unpack_int4_words(x_q), unpack_int4_words(w_q)  # [M, Kp], [N, Kp] int8 (asym x: 0..15)
  uv = (None, None) if m_x is None else (m_x, s_w * wsum.astype(jnp.float32))  # QUIK: + m_x (s_w wsum)
  return _hopper_o16.w8a8o16_matmul_hopper(x8, s_x, w8, s_w, x_o, w_o, count, bias, *uv, out_dtype=out_dtype,
                                           config=config, interpret=interpret, num_sms=num_sms)
