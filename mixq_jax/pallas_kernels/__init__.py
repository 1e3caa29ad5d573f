"""Pallas kernels for 8-bit mixed-precision linear layers (Triton backend; on sm_90 the large-M
W8A8 / W8A8O16 GEMMs run Mosaic GPU kernels, see w8a8_matmul_hopper.py and w8a8o16_matmul_hopper.py).

Shape letters: M tokens (any M; padding/masking is inside the kernels), N output features,
K input features (N, K multiples of 16), C outlier capacity.

Every kernel has a plain-jnp `*_reference` with the same signature, and every wrapper takes
`interpret=True` to run in Pallas interpret mode on the CPU, and `config=KernelConfig(...)` to
override the tuned block sizes (see `configs.select_config`).

quantize_act(x [M,K] bf16/fp16, outlier_idx [C] int32, outlier_count [] int32,
             norm_weight [K] | None, outlier_mask [K] | None) -> QuantizedActivations(
                 x_q [M,K] int8, s_x [M] f32, x_outlier [M,C] x.dtype, col_mask [K] bool | None)
    per-token symmetric int8 with the outlier columns split off (and RMSNorm fused if given).
w8a8_matmul(x_q [M,K] i8, s_x [M] f32, w_q [N,K] i8, s_w [N] f32, bias [N] | None) -> [M,N]
    int32 accumulate; y = acc * s_x[m] * s_w[n] (+ bias), bf16 out by default.
w8a8o16_matmul(x_q, s_x, w_q, s_w, x_o [M,C] 16-bit, w_o [N,C] 16-bit, outlier_count [] i32,
               bias | None) -> [M,N]
    MixQ W8A8O16: w8a8 + x_o @ w_o.T fused in the same output tile.
w8a16_matmul(x [M,K] bf16/fp16, w_q [N,K] i8, s_w [N] f32, bias | None) -> [M,N]
    int8 weights dequantized in registers, 16-bit MMA; tuned for decode (M <= 16).
outlier_flag(s_x, threshold) -> bool []: MixQ detection from the scales alone.
outlier_mask_from_idx(idx, count, K) -> [K] int8: pass to quantize_act(outlier_mask=...) when the
    caller keeps it with its outlier state (saves a small XLA scatter per call).
"""

from mixq_jax.pallas_kernels.configs import KernelConfig, select_config
from mixq_jax.pallas_kernels.quantize_act import (
    QuantizedActivations,
    outlier_flag,
    outlier_mask_from_idx,
    quantize_act,
    quantize_act_reference,
)
from mixq_jax.pallas_kernels.w8a16_matmul import w8a16_matmul, w8a16_matmul_reference
from mixq_jax.pallas_kernels.w8a8_matmul import (
    w8a8_matmul,
    w8a8_matmul_reference,
    w8a8o16_matmul,
    w8a8o16_matmul_reference,
)

__all__ = [
    "KernelConfig",
    "QuantizedActivations",
    "outlier_flag",
    "outlier_mask_from_idx",
    "quantize_act",
    "quantize_act_reference",
    "select_config",
    "w8a16_matmul",
    "w8a16_matmul_reference",
    "w8a8_matmul",
    "w8a8_matmul_reference",
    "w8a8o16_matmul",
    "w8a8o16_matmul_reference",
]

# sm_90 only (Mosaic GPU backend); w8a8_matmul / w8a8o16_matmul route M >= 1024 here on Hopper.
from mixq_jax.pallas_kernels.w8a8_matmul_hopper import HopperConfig, w8a8_matmul_hopper  # noqa: E402
from mixq_jax.pallas_kernels.w8a8o16_matmul_hopper import w8a8o16_matmul_hopper  # noqa: E402

__all__ += ["HopperConfig", "w8a8_matmul_hopper", "w8a8o16_matmul_hopper"]

# 4-bit and microscaling family (issue 8); layouts in int4_pack.py and mx.py. On sm_90 the wrappers
# dispatch by M to XLA's own programs (xla_matmuls.py) or to the Mosaic GPU 8-bit kernels after an
# int4 -> int8 unpack (w4_hopper.py), where those measured faster (BENCHMARKS.md).
from mixq_jax.pallas_kernels import int4_pack, mx, xla_matmuls  # noqa: E402
from mixq_jax.pallas_kernels.mx_matmul import mx_matmul, mx_matmul_reference  # noqa: E402
from mixq_jax.pallas_kernels.w4a16_matmul import w4a16_matmul, w4a16_matmul_reference  # noqa: E402
from mixq_jax.pallas_kernels.w4a16_matmul_hopper import W4A16HopperConfig, w4a16_matmul_hopper  # noqa: E402
from mixq_jax.pallas_kernels.w4a4o16_matmul import (  # noqa: E402
    w4a4o16_matmul,
    w4a4o16_matmul_reference,
)
from mixq_jax.pallas_kernels.w4a8_matmul import w4a8_matmul, w4a8_matmul_reference  # noqa: E402

__all__ += [
    "int4_pack",
    "xla_matmuls",
    "mx",
    "mx_matmul",
    "mx_matmul_reference",
    "w4a16_matmul",
    "w4a16_matmul_reference",
    "W4A16HopperConfig",
    "w4a16_matmul_hopper",
    "w4a4o16_matmul",
    "w4a4o16_matmul_reference",
    "w4a8_matmul",
    "w4a8_matmul_reference",
]
