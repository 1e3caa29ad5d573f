"""bench/trace_summary.py on a synthetic GPU-shaped trace, and bench/throughput.py --profile on the CPU."""

import gzip
import json
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import throughput  # noqa: E402
import trace_summary  # noqa: E402


def _write_trace(root: pathlib.Path, events: list[dict]) -> None:
  d = root / "plugins" / "profile" / "run1"
  d.mkdir(parents=True)
  with gzip.open(d / "perfetto_trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)


def test_counts_stream_lines_of_the_device_only(tmp_path):
  meta = [
      dict(ph="M", name="process_name", pid=1, args=dict(name="/host:CPU")),
      dict(ph="M", name="process_name", pid=2, args=dict(name="/device:GPU:0")),
      dict(ph="M", name="thread_name", pid=2, tid=7, args=dict(name="Stream #7(Compute)")),
      dict(ph="M", name="thread_name", pid=2, tid=8, args=dict(name="XLA Ops")),
  ]
  work = [
      dict(ph="X", pid=2, tid=7, name="gemm", ts=100.0, dur=30.0),
      dict(ph="X", pid=2, tid=7, name="quantize", ts=140.0, dur=5.0),
      dict(ph="X", pid=2, tid=7, name="gemm", ts=150.0, dur=30.0),
      dict(ph="X", pid=2, tid=8, name="fusion.1", ts=100.0, dur=80.0),  # repeats the stream's time
      dict(ph="X", pid=1, tid=1, name="host work", ts=0.0, dur=1000.0),
      dict(ph="X", pid=2, tid=7, name="$tracer.py:1 f", ts=0.0, dur=500.0),
  ]
  _write_trace(tmp_path, meta + work)
  s = trace_summary.summarize(tmp_path)
  assert s["busy_us"] == pytest.approx(65.0)
  assert s["span_us"] == pytest.approx(80.0)  # 100 .. 180: 15 us idle between kernels
  assert [(k["name"], k["count"]) for k in s["kernels"]] == [("gemm", 2), ("quantize", 1)]
  table = trace_summary.format_summary(s, per=2)
  assert "| `gemm` | 30.0 | 1.00 |" in table and "busy 32.5 us/step, span 40.0 us/step" in table


def test_missing_trace_names_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    trace_summary.summarize(tmp_path)


def test_throughput_profile_flag(tmp_path, capsys):
  out, prof = tmp_path / "tp.json", tmp_path / "prof"
  throughput.main(["--model", "tiny", "--scheme", "mix8", "--batch-size", "2", "--prompt-len", "8",
                   "--decode-len", "4", "--reps", "1", "--peer", "off", "--compile-workers", "2",
                   "--json", str(out), "--profile", str(prof)])
  assert "| kernel | us/step | calls/step | share of busy |" in capsys.readouterr().out
  (rec,) = json.loads(out.read_text())["records"]
  assert rec["profile"]["steps"] == 4 and rec["profile"]["kernels"], rec["profile"]
  assert trace_summary.find_trace(prof / "mix8_B2_P8").exists()
