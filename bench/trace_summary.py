"""Per-kernel time table from a `jax.profiler.trace(..., create_perfetto_trace=True)` directory.

    python bench/trace_summary.py TRACE_DIR [--top 20] [--per N]

Reads the newest perfetto_trace.json.gz under TRACE_DIR and sums the duration of every complete
event ("ph": "X") by name, over the CUDA-stream lines of the device processes ("/device:GPU:0", ...)
when the trace has any, else over the host ("/host:CPU": CPU runs, where XLA ops execute on host
threads and nest, so busy can exceed span there). Python-tracer events ("$file.py:line") are left out.

`busy` is the summed kernel time and `span` the time from the first kernel start to the last
kernel end: on one GPU stream, span - busy is the time the device sat idle between kernels
(launch gaps, host waits). This is what bench/throughput.py --profile prints per configuration,
to say where a decode step's time goes beyond the GEMMs that bench/gemm.py times in isolation.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
from typing import Any


def find_trace(log_dir: str | pathlib.Path) -> pathlib.Path:
  files = sorted(pathlib.Path(log_dir).glob("**/perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
  if not files:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {log_dir} (was the trace taken with "
                            "create_perfetto_trace=True?)")
  return files[-1]


def summarize(log_dir: str | pathlib.Path, top: int = 20) -> dict[str, Any]:
  """{"processes", "busy_us", "span_us", "events", "kernels": [{"name", "total_us", "count", "share"}]}:
  the `top` names by summed duration, largest first."""
  data = json.load(gzip.open(find_trace(log_dir)))
  events = data["traceEvents"] if isinstance(data, dict) else data
  meta = [e for e in events if e.get("ph") == "M"]
  pname = {e["pid"]: e.get("args", {}).get("name", "") for e in meta if e.get("name") == "process_name"}
  tname = {(e["pid"], e.get("tid")): e.get("args", {}).get("name", "") for e in meta
           if e.get("name") == "thread_name"}
  device = {pid for pid, n in pname.items() if n.startswith("/device:")}
  keep_pids = device or set(pname)
  # A GPU process has one line per CUDA stream and also summary lines ("XLA Modules", "XLA Ops")
  # that repeat the same time: count the stream lines only, when there are any.
  streams = {k for k, n in tname.items() if k[0] in device and "stream" in n.lower()}
  total: collections.Counter = collections.Counter()
  count: collections.Counter = collections.Counter()
  start, end = float("inf"), float("-inf")
  for e in events:
    if e.get("ph") != "X" or e.get("pid") not in keep_pids or e["name"].startswith("$"):
      continue  # "$file.py:line fn" events are the Python tracer's, not work
    if streams and (e["pid"], e.get("tid")) not in streams:
      continue
    dur = float(e.get("dur", 0.0))
    total[e["name"]] += dur
    count[e["name"]] += 1
    start, end = min(start, float(e["ts"])), max(end, float(e["ts"]) + dur)
  busy = sum(total.values())
  kernels = [dict(name=n, total_us=t, count=count[n], share=t / busy if busy else 0.0)
             for n, t in total.most_common(top)]
  lines = sorted({tname.get(k, str(k[1])) for k in streams}) or sorted(pname[p] for p in keep_pids)
  return dict(processes=lines, busy_us=busy,
              span_us=max(0.0, end - start), events=sum(count.values()), kernels=kernels)


def format_summary(s: dict[str, Any], per: int = 1, unit: str = "step") -> str:
  """Markdown table; times divided by `per` (e.g. the decode steps in the trace)."""
  lines = [f"device busy {s['busy_us'] / per:.1f} us/{unit}, span {s['span_us'] / per:.1f} us/{unit} "
           f"({s['events']} events on {', '.join(s['processes'])})", "",
           f"| kernel | us/{unit} | calls/{unit} | share of busy |", "|---|---:|---:|---:|"]
  for k in s["kernels"]:
    name = k["name"] if len(k["name"]) <= 70 else k["name"][:67] + "..."
    lines.append(f"| `{name}` | {k['total_us'] / per:.1f} | {k['count'] / per:.2f} | {100 * k['share']:.1f}% |")
  return "\n".join(lines)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("trace_dir", help="directory given to jax.profiler.trace")
  ap.add_argument("--top", type=int, default=20, help="kernel names to list (default 20)")
  ap.add_argument("--per", type=int, default=1, help="divide times by this (e.g. decode steps traced)")
  args = ap.parse_args(argv)
  print(format_summary(summarize(args.trace_dir, args.top), args.per))


if __name__ == "__main__":
  main()
