"""Block sizes / warps / stages per (kernel, GPU, M bucket, N, K).

Lookup order: exact (kernel, gpu, m_bucket, N, K) entry of the checked-in table `tuned_table.TABLE`
(written by `python bench/gemm.py --tune`), then (kernel, gpu, m_bucket, "*", "*"), then the
hand-written defaults below. A decode config (M <= 16) that was not tuned for its N, K gets more
K slices on a GPU where its programs would not fill the SMs (`spread_split_k`: narrow layers such as
k/v projections). The wrappers shrink blocks that do not divide N / K (see `_shapes.pow2_divisor`),
so any entry is safe for any shape.
"""

import dataclasses
import functools

import jax

from mixq_jax.pallas_kernels import _shapes, tuned_table


@dataclasses.dataclass(frozen=True, kw_only=True)
class KernelConfig:
  block_m: int = 64   # rows of x per program (quantize_act: rows per program)
  block_n: int = 64   # output columns per program (unused by quantize_act)
  block_k: int = 64   # K step of the main loop
  num_warps: int = 4
  num_stages: int = 3  # software-pipelining depth of the K loop
  group_m: int = 8    # M tiles per group in the tile order (L2 reuse of weight tiles)
  split_k: int = 1    # K slices reduced by separate programs (decode, small N; w8a16, 4-bit, mx)
  passes: int = 1     # quantize_act only: 1 keeps the row block in registers (x read once), 2 reads
                      # it twice (statistics, then quantization; the second read mostly from L2)

  def __post_init__(self):
    for f in ("block_m", "block_n", "block_k", "num_warps", "split_k"):
      v = getattr(self, f)
      if v < 1 or v & (v - 1):
        raise ValueError(f"{f}={v} must be a power of two")
    if self.passes not in (1, 2):
      raise ValueError(f"passes={self.passes} must be 1 or 2")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


KERNELS = ("quantize_act", "w8a8", "w8a8o16", "w8a16")


BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def m_bucket(m: int) -> int:
  """Power-of-two bucket of M in [16, 4096] used as the table key."""
  b = 16
  while b < m and b < 4096:
    b *= 2
  return b


@functools.cache
def gpu_name() -> str:
  """Short name of the default device ('h100', 'h200', 'a100', 'cpu', or the device kind)."""
  d = jax.devices()[0]
  if d.platform != "gpu":
    return d.platform
  kind = d.device_kind.lower()
  for short in ("h200", "h100", "h800", "a100", "a800", "l40s", "a10g"):
    if short in kind:
      return short
  return kind.replace(" ", "_")


def default_config(kernel: str, m: int) -> KernelConfig:
  """Hand-picked starting points (before tuning): small-M favours narrow N tiles to fill the SMs."""
  mb = m_bucket(m)
  if kernel == "quantize_act":
    return KernelConfig(block_m=1, block_k=2048, num_warps=4, num_stages=1)
  if kernel == "w8a16":
    if mb <= 16:
      return KernelConfig(block_m=16, block_n=32, block_k=256, num_warps=4, num_stages=4)
    if mb <= 64:
      return KernelConfig(block_m=mb, block_n=64, block_k=128, num_warps=4, num_stages=4)
    return KernelConfig(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3)
  if kernel in ("w8a8", "w8a8o16"):
    if mb <= 16:
      return KernelConfig(block_m=16, block_n=64, block_k=256, num_warps=4, num_stages=4)
    if mb <= 64:
      return KernelConfig(block_m=mb, block_n=64, block_k=256, num_warps=4, num_stages=4)
    if mb <= 512:
      return KernelConfig(block_m=128, block_n=128, block_k=128, num_warps=4, num_stages=4)
    return KernelConfig(block_m=128, block_n=256, block_k=128, num_warps=8, num_stages=3)
  raise ValueError(f"unknown {kernel=}; expected one of {KERNELS}")


@functools.cache
def sm_count() -> int | None:
  """Streaming multiprocessors of the default GPU; None elsewhere (no spreading in interpret mode)."""
  d = jax.devices()[0]
  return getattr(d, "core_count", None) if d.platform == "gpu" else None


# Decode configs that come from a bucket default (no entry for this N, K) get their split_k raised
# until the programs cover the SMs about twice (`spread_split_k`). Module flag for same-run A/B timing.
SPREAD_SPLIT_K = True
SPLIT_KERNELS = ("w8a16", "w4a16", "w4a8", "w4a8g", "mx")  # the kernels whose wrappers split K
SPREAD_WAVES = 1.8  # programs per SM to aim for


def spread_split_k(cfg: KernelConfig, n: int, k: int, sms: int | None, min_block_k: int | None = None
                   ) -> KernelConfig:
  """A decode config (block_m <= 16) for an N, K it was not tuned on, spread over more programs.

  While the programs (N tiles x K slices) number under SPREAD_WAVES x `sms`: split_k doubles if every
  slice keeps at least two block_k steps, else block_k halves (down to `min_block_k`; default: no
  halving). A bucket default is the best geometric mean over the tuned shapes, all wide or deep; on a
  narrow layer (a k/v projection, N = 512 or 1024) it started 32-64 programs. On an H100 at M = 16,
  128-256 programs ran w8a16 15-20% faster there and the 4-bit kernels 25-45% faster (k/v shapes,
  BENCHMARKS.md, 2026-12-06): a decode program streams its weights at one or two warps per scheduler,
  so more programs per SM keep more loads in flight. The split-K partials cost one small XLA sum.
  """
  if sms is None or cfg.block_m > 16:
    return cfg
  tiles = -(-n // _shapes.pow2_divisor(n, cfg.block_n))
  bk, split = cfg.block_k, cfg.split_k
  while tiles * split < SPREAD_WAVES * sms:
    steps = k // bk
    if steps % (2 * split) == 0 and steps // (2 * split) >= 2:
      split *= 2
    elif min_block_k is not None and bk // 2 >= min_block_k and k % (bk // 2) == 0:
      bk //= 2
    else:
      break
  return dataclasses.replace(cfg, block_k=bk, split_k=split) if (bk, split) != (cfg.block_k, cfg.split_k) else cfg


def spread_untuned(cfg: KernelConfig, kernel: str, n: int, k: int, min_block_k: int | None = None) -> KernelConfig:
  """`spread_split_k` on this GPU for a config that came from a bucket default (both select_configs)."""
  if kernel not in SPLIT_KERNELS or not SPREAD_SPLIT_K:
    return cfg
  return spread_split_k(cfg, n, k, sm_count(), min_block_k)


def table_key(kernel: str, gpu: str, mb: int, n, k) -> str:
  return f"{kernel}|{gpu}|{mb}|{n}|{k}"


def select_config(kernel: str, m: int, n: int, k: int, gpu: str | None = None) -> KernelConfig:
  """Tuned config for this problem on this GPU, else the default for the M bucket (quantize_act:
  else the nearest tuned bucket's)."""
  if kernel not in KERNELS:
    raise ValueError(f"unknown {kernel=}; expected one of {KERNELS}")
  gpu = gpu or gpu_name()
  mb = m_bucket(m)
  keys = [table_key(kernel, gpu, mb, n, k), table_key(kernel, gpu, mb, "*", "*")]
  if kernel == "quantize_act":
    # Then the nearest tuned M bucket (the sweep covers 1024 and 4096), the larger on a tie: its
    # config (rows per program, K chunk, passes) does not depend on M the way a GEMM tile does, and
    # the hand default is one pass, which is slow for K = 11008 (bench/h200_2026-12-05/qa_tune.log).
    near = sorted((b for b in BUCKETS if b != mb), key=lambda b: (abs(b.bit_length() - mb.bit_length()), -b))
    keys += [table_key(kernel, gpu, b, n, k) for b in near] + [table_key(kernel, gpu, b, "*", "*") for b in near]
  for i, key in enumerate(keys):
    entry = tuned_table.TABLE.get(key)
    if entry is not None:
      cfg = KernelConfig(**entry)
      break
  else:
    i, cfg = len(keys), default_config(kernel, m)
  if i > 0:  # not tuned on this N, K; block_k 128 was w8a16's best at 1024 x 4096 and 512 x 3584
    cfg = spread_untuned(cfg, kernel, n, k, min_block_k=128)
  return cfg
