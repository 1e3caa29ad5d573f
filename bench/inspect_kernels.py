"""Static look at the machine code of the Pallas (Triton) kernels, on any machine, no GPU needed.

    pip install triton          # the Triton compiler (ptxas, cuobjdump ship in its wheel); optional
    python bench/inspect_kernels.py [--kernels w8a8,w4a16,...] [--ms 16,4096] [--n 8192] [--k 8192] \\
        [--gpu h100] [--config BM,BN,BK,WARPS,STAGES[,SPLIT_K]] [--arch 90] [--keep DIR] [--json OUT]

Each kernel is lowered by JAX for CUDA exactly as on the GPU (`lowering_platforms=("cuda",)`), the
Triton IR (TTIR) handed to XLA is captured, and the PyPI Triton compiler turns it into PTX and a
cubin for sm_<arch>, whose SASS is disassembled with the cuobjdump in Triton's wheel. The table
counts what decides speed: which MMA instructions the dots became (wgmma on Hopper =
HGMMA/IGMMA/QGMMA in SASS, or the Ampere-style mma.sync = HMMA/IMMA), registers per thread and
the local-memory stack (spills), shared memory, shared stores (STS: operands produced in registers,
e.g. unpacked int4, take a round trip through shared memory before a wgmma), and global loads
(LDGSTS = cp.async into shared memory, LDG = loads into registers).

The TTIR-level passes XLA's pipeline starts with (canonicalize, combine, CSE) run first: without
them `acc + dot` stays a separate add per accumulator element instead of the MMA's accumulator input
(the loop counts in BENCHMARKS.md's first 4-bit decode section were taken without them and overstate the
loops).

Caveat: XLA compiles the same TTIR with its own bundled Triton and pass pipeline, which is not the
PyPI release; instruction choice and register allocation usually agree, but confirm on a GPU
(`cuobjdump` of XLA's dump) before relying on a number. Configs are those `select_config` picks for
--gpu (default h100, the tuned table's entries), unless --config is given.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import pathlib
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import gemm  # noqa: E402  (8-bit kernels and their input sets)
import gemm4  # noqa: E402  (4-bit and MX kernels)
import jax  # noqa: E402

from mixq_jax.pallas_kernels import _w4_common, configs  # noqa: E402
from mixq_jax.pallas_kernels.configs import KernelConfig  # noqa: E402

KERNELS_8 = ("w8a8", "w8a8o16", "w8a16", "quantize_act")
KERNELS = KERNELS_8 + gemm4.KINDS  # gemm4's mxfp8 is mx_matmul's FP8 tensor-core path (use_fp8=True)
_SASS = ("HGMMA", "IGMMA", "QGMMA", "HMMA", "IMMA", "STS", "LDS", "LDSM", "LDGSTS", "LDG", "STL", "LDL")


@contextlib.contextmanager
def capture_ttir():
  """Yields a list that collects the TTIR text of every pallas_call lowered for CUDA inside."""
  from jax._src.pallas.triton import pallas_call_registration as reg  # noqa: PLC0415 -- private, jax 0.10/0.11

  found: list[str] = []
  orig = reg.lowering.lower_jaxpr_to_triton_module

  def hook(*args, **kwargs):
    res = orig(*args, **kwargs)
    found.append(res.module.operation.get_asm(enable_debug_info=False))
    return res

  reg.lowering.lower_jaxpr_to_triton_module = hook
  try:
    yield found
  finally:
    reg.lowering.lower_jaxpr_to_triton_module = orig


@contextlib.contextmanager
def tuned_for(gpu: str):
  """Inside, select_config (8-bit and 4-bit families) reads the tuned-table entries of `gpu`, and the
  benchmarks' kernel functions lower the real Triton kernels (not interpret mode)."""
  saved = configs.gpu_name, _w4_common.gpu_name, gemm.INTERPRET
  configs.gpu_name = _w4_common.gpu_name = lambda: gpu
  gemm.INTERPRET = False
  try:
    yield
  finally:
    configs.gpu_name, _w4_common.gpu_name, gemm.INTERPRET = saved


def kernel_and_args(kind: str, m: int, n: int, k: int, config: KernelConfig | None):
  """(kernel function, abstract args) for one problem, from the benchmarks' own input sets."""
  if kind in KERNELS_8:
    fn, _ = gemm.kernel_fn(kind, config)
    return fn, jax.eval_shape(lambda: gemm.make_sets(kind, m, n, k, 1)[0])
  fn, _ = gemm4.kernel_fn(kind)
  extra = {} if config is None else {"config": config}
  return functools.partial(fn, **extra), jax.eval_shape(lambda: gemm4.make_set(kind, m, n, k, 0))


def lower_to_ttir(kind: str, m: int, n: int, k: int, config: KernelConfig | None, gpu: str = "h100") -> list[dict]:
  """[{ttir, num_warps, num_stages}] for the pallas_calls of one kernel call, lowered for CUDA with
  the configs tuned for `gpu` (unless `config` is given)."""
  with tuned_for(gpu):
    fn, args = kernel_and_args(kind, m, n, k, config)
    with capture_ttir() as found:
      text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
  params = re.findall(r"num_stages = (\d+) : i32, num_warps = (\d+) : i32", text)
  if len(params) != len(found) or not found:
    raise RuntimeError(f"{kind} M={m}: captured {len(found)} Triton modules but {len(params)} custom calls")
  return [{"ttir": t, "num_stages": int(s), "num_warps": int(w)} for t, (s, w) in zip(found, params)]


def _ttir_passes(ttir: str, num_warps: int, arch: int, tmp: str) -> str:
  """The TTIR-level passes (canonicalize, combine, CSE, ...) that XLA's Triton pipeline runs first.
  `triton.compile` skips the passes of the stage a file is given in, so without this step `acc + dot`
  stays a separate add instead of the MMA's accumulator input, and the counts overstate the loop."""
  from triton._C.libtriton import ir  # noqa: PLC0415
  from triton.backends.compiler import GPUTarget  # noqa: PLC0415
  from triton.backends.nvidia.compiler import CUDABackend  # noqa: PLC0415
  raw = pathlib.Path(tmp) / "raw.ttir"
  raw.write_text(ttir)
  ctx = ir.context()
  ir.load_dialects(ctx)
  backend = CUDABackend(GPUTarget("cuda", arch, 32))
  backend.load_dialects(ctx)
  mod = ir.parse_mlir_module(str(raw), ctx)
  mod.context = ctx
  CUDABackend.make_ttir(mod, {}, backend.parse_options({"num_warps": num_warps}), arch)
  return str(mod)


def compile_and_count(ttir: str, num_warps: int, num_stages: int, arch: int, keep: pathlib.Path | None,
                      name: str) -> dict:
  """Compiles TTIR for sm_<arch> with the PyPI Triton and counts the instructions that matter."""
  try:
    import triton  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
  except ImportError as e:
    raise SystemExit("this step needs the Triton compiler: pip install triton") from e
  with tempfile.TemporaryDirectory() as tmp:
    src = pathlib.Path(tmp) / f"{name}.ttir"
    src.write_text(_ttir_passes(ttir, num_warps, arch, tmp))
    kern = triton.compile(str(src), target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})
    cubin = pathlib.Path(tmp) / f"{name}.cubin"
    cubin.write_bytes(kern.asm["cubin"])
    tool = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    sass = subprocess.run([str(tool), "--dump-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    res = subprocess.run([str(tool), "--dump-resource-usage", str(cubin)], capture_output=True, text=True,
                         check=True).stdout
  ptx = kern.asm["ptx"]
  if keep is not None:
    keep.mkdir(parents=True, exist_ok=True)
    (keep / f"{name}.ttir").write_text(ttir)
    (keep / f"{name}.ttgir").write_text(kern.asm["ttgir"])  # layouts: where a convert_layout went through shared memory
    (keep / f"{name}.ptx").write_text(ptx)
    (keep / f"{name}.sass").write_text(sass)
  out = {op: len(re.findall(rf"\b{op}\b", sass)) for op in _SASS}
  reg, stack = re.search(r"REG:(\d+)", res), re.search(r"STACK:(\d+)", res)
  out.update(regs=int(reg.group(1)) if reg else None, stack_bytes=int(stack.group(1)) if stack else None,
             shared_bytes=int(kern.metadata.shared), ptx_wgmma=ptx.count("wgmma.mma_async"),
             ptx_mma_sync=len(re.findall(r"\bmma\.sync", ptx)), ptx_tma=ptx.count("cp.async.bulk.tensor"))
  return out


def mma_kind(c: dict) -> str:
  wg = [op for op in ("HGMMA", "IGMMA", "QGMMA") if c[op]]
  sync = [op for op in ("HMMA", "IMMA") if c[op]]
  return "+".join([f"wgmma ({'/'.join(wg)})"] * bool(wg) + [f"mma.sync ({'/'.join(sync)})"] * bool(sync)) or "none"


def format_table(rows: list[dict]) -> str:
  lines = ["| kernel | M | warps | stages | MMA | regs | spill stack (B) | smem (KiB) | STS | LDS+LDSM | LDGSTS | LDG |",
           "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['kernel']} | {r['m']} | - | - | failed: {r['error'][:80]} | | | | | | | |")
      continue
    lines.append(f"| {r['kernel']} | {r['m']} | {r['num_warps']} | {r['num_stages']} | {mma_kind(r)} | {r['regs']} | "
                 f"{r['stack_bytes']} | {r['shared_bytes'] / 1024:.0f} | {r['STS']} | {r['LDS'] + r['LDSM']} | "
                 f"{r['LDGSTS']} | {r['LDG']} |")
  return "\n".join(lines)


def parse_config(text: str | None) -> KernelConfig | None:
  if not text:
    return None
  vals = [int(v) for v in text.split(",")]
  if len(vals) not in (5, 6):
    raise SystemExit(f"--config takes BM,BN,BK,WARPS,STAGES[,SPLIT_K], got {text!r}")
  bm, bn, bk, w, s = vals[:5]
  return KernelConfig(block_m=bm, block_n=bn, block_k=bk, num_warps=w, num_stages=s,
                      split_k=vals[5] if len(vals) == 6 else 1)


def main(argv=None) -> list[dict]:
  ap = argparse.ArgumentParser(prog="python bench/inspect_kernels.py", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--kernels", default=",".join(KERNELS), help=f"comma-separated, from {', '.join(KERNELS)}")
  ap.add_argument("--ms", default="16,4096", help="comma-separated M values (default 16,4096)")
  ap.add_argument("--n", type=int, default=8192, help="output features N (default 8192)")
  ap.add_argument("--k", type=int, default=8192, help="input features K (default 8192)")
  ap.add_argument("--gpu", default="h100", help="whose tuned configs select_config uses (default h100)")
  ap.add_argument("--config", default=None, help="BM,BN,BK,WARPS,STAGES[,SPLIT_K] for every kernel instead of the tuned ones")
  ap.add_argument("--arch", type=int, default=90, help="compute capability to compile for (default 90 = Hopper)")
  ap.add_argument("--ttir-only", action="store_true", help="only lower and capture the TTIR (no Triton needed)")
  ap.add_argument("--keep", metavar="DIR", help="write each kernel's .ttir/.ptx/.sass here")
  ap.add_argument("--json", metavar="OUT", help="write the rows as JSON")
  args = ap.parse_args(argv)
  kinds = [s for s in args.kernels.split(",") if s]
  bad = sorted(set(kinds) - set(KERNELS))
  if bad:
    raise SystemExit(f"unknown kernels {bad}; choose from {', '.join(KERNELS)}")
  config = parse_config(args.config)
  keep = pathlib.Path(args.keep) if args.keep else None
  rows = _inspect(kinds, args, config, keep)
  if not args.ttir_only:
    print("\n" + format_table(rows))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
  return rows


def _inspect(kinds, args, config, keep) -> list[dict]:
  rows = []
  for kind in kinds:
    for m in (int(v) for v in args.ms.split(",")):
      row = {"kernel": kind, "m": m, "n": args.n, "k": args.k}
      try:
        mods = lower_to_ttir(kind, m, args.n, args.k, config, args.gpu)
        mod = mods[-1]  # the matmul is the last pallas_call of a wrapper
        row.update(num_warps=mod["num_warps"], num_stages=mod["num_stages"], ttir_ops=mod["ttir"].count("tt.dot"))
        if not args.ttir_only:
          row.update(compile_and_count(mod["ttir"], mod["num_warps"], mod["num_stages"], args.arch, keep,
                                       f"{kind}_M{m}"))
      except SystemExit:
        raise
      except Exception as e:  # noqa: BLE001 -- one failing kernel should not hide the others
        row["error"] = f"{type(e).__name__}: {e}"
      rows.append(row)
      print(json.dumps({k: v for k, v in row.items() if k != "error"} | ({"error": row["error"][:200]}
                                                                          if "error" in row else {})), flush=True)
  return rows


if __name__ == "__main__":
  main()
