"""Zero-shot accuracy with lm-evaluation-harness scoring on the local task files.

    python -m mixq_jax.eval.zeroshot --model smollm2-135m --tasks arc_easy,piqa --limit 200
    python -m mixq_jax.eval.zeroshot --ckpt ckpts/smollm2-w8a8      # all tasks, JSON beside it

Task formatting is in tasks.py, batched scoring in loglik.py. Metrics as lm-eval reports them:
acc (argmax of summed continuation log-likelihood), acc_norm (argmax of log-likelihood divided by
the choice's length in characters; ARC, PIQA, HellaSwag), LAMBADA acc (greedy last word) and
perplexity exp(-mean log-likelihood). Standard errors: sample std / sqrt(n) for accuracies, as
lm-eval; for perplexity the delta method, ppl * stderr(log-likelihood) (lm-eval bootstraps it).
"""

import argparse
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from mixq_jax.eval import loglik, tasks as tasks_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
ALL_TASKS = ("arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "boolq",
             "lambada_openai")


def default_data_dir() -> pathlib.Path:
    """$MIXQ_DATA_DIR/zeroshot, else shared/data/zeroshot beside the repository."""
    return pathlib.Path(os.environ.get("MIXQ_DATA_DIR", REPO.parent / "shared" / "data")) / "zeroshot"


def _stderr(x: np.ndarray) -> float | None:
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None


def task_metrics(kind: tasks_lib.Kind, items: Sequence[tasks_lib.Item],
                 scores: Sequence[Sequence[loglik.Score]]) -> dict[str, Any]:
    """lm-eval's per-task aggregates from per-item, per-choice scores."""
    ll = [np.array([s.loglik for s in item_scores]) for item_scores in scores]
    out: dict[str, Any] = {}
    if kind is tasks_lib.Kind.LAST_WORD:
        acc = np.array([float(s[0].is_greedy) for s in scores])
        word_ll = np.array([x[0] for x in ll])
        ppl = math.exp(-word_ll.mean())
        se = _stderr(word_ll)
        out |= {"acc": float(acc.mean()), "acc_stderr": _stderr(acc),
                "perplexity": ppl, "perplexity_stderr": None if se is None else ppl * se,
                "greedy": [bool(g) for g in acc]}  # per item, so subsets can be re-scored
    else:
        acc = np.array([float(np.argmax(x) == it.gold) for x, it in zip(ll, items)])
        out |= {"acc": float(acc.mean()), "acc_stderr": _stderr(acc)}
        if kind is tasks_lib.Kind.MULTIPLE_CHOICE:
            norm = np.array([float(np.argmax(x / np.array(it.choice_lengths, float)) == it.gold)
                             for x, it in zip(ll, items)])
            out |= {"acc_norm": float(norm.mean()), "acc_norm_stderr": _stderr(norm)}
    out["n"] = len(items)
    out["loglik"] = [[float(v) for v in x] for x in ll]
    return out


def evaluate(scorer: loglik.Scorer, tokenizer: Any, task_names: Sequence[str],
             data_dir: str | os.PathLike, limit: int | None = None,
             progress: bool = True) -> dict[str, dict[str, Any]]:
    """{task: metrics} for each task; all files are read (and checked) before any scoring."""
    loaded = {name: tasks_lib.load_task(name, data_dir, limit) for name in task_names}
    results = {}
    for name, items in loaded.items():
        requests = [r for it in items for r in it.requests]
        pairs = loglik.encode_pairs(tokenizer, requests)
        bar = tqdm(total=None, desc=name, unit="tok", disable=not progress, file=sys.stderr)

        def update(done, total, bar=bar):
            bar.total = total
            bar.update(done - bar.n)

        flat = scorer(pairs, progress=update)
        bar.close()
        scores, k = [], 0
        for it in items:
            scores.append(flat[k:k + len(it.requests)])
            k += len(it.requests)
        results[name] = task_metrics(tasks_lib.get_task(name).kind, items, scores)
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    rows = [("task", "metric", "value", "stderr", "n")]
    for name, r in results.items():
        for metric in ("acc", "acc_norm", "perplexity"):
            if metric in r:
                se = r.get(f"{metric}_stderr")
                rows.append((name, metric, f"{r[metric]:.4f}", "" if se is None else f"{se:.4f}",
                             str(r["n"])))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def model_scorer(model: Any, *, batch_size: int, max_batch_tokens: int) -> loglik.Scorer:
    """A Scorer over a runtime.LoadedModel (its jitted, possibly stateful, `logits`)."""
    return loglik.Scorer(model.logits, max_length=model.config.max_position_embeddings,
                         batch_size=batch_size, max_batch_tokens=max_batch_tokens)


def parse_tasks(spec: str) -> list[str]:
    names = [t.strip() for t in spec.split(",") if t.strip()]
    if not names:
        raise ValueError(f"no task names in --tasks {spec!r}")
    for n in names:
        tasks_lib.get_task(n)  # raises on unknown names, listing the known ones
    return names


def main(argv: Sequence[str] | None = None) -> int:
    from mixq_jax import runtime

    ap = argparse.ArgumentParser(prog="python -m mixq_jax.eval.zeroshot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    runtime.add_model_args(ap)
    ap.add_argument("--tasks", default=",".join(ALL_TASKS),
                    help=f"comma-separated, from {','.join(tasks_lib.TASKS)} (default: all)")
    ap.add_argument("--limit", type=int, default=None, help="first N items of each task")
    ap.add_argument("--batch-size", type=int, default=32, help="rows per batch at most")
    ap.add_argument("--max-batch-tokens", type=int, default=4096,
                    help="rows x padded length per batch at most (bounds the [B, T, V] logits)")
    ap.add_argument("--data-dir", default=None,
                    help=f"folder with the task files (default $MIXQ_DATA_DIR/zeroshot = {default_data_dir()})")
    ap.add_argument("--json", default=None, metavar="OUT",
                    help="write results here (default with --ckpt: DIR/zeroshot.json, merged)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        names = parse_tasks(args.tasks)
    except ValueError as e:
        ap.error(str(e))
    if args.limit is not None and args.limit < 1:
        ap.error(f"--limit {args.limit} must be >= 1")
    data_dir = pathlib.Path(args.data_dir) if args.data_dir else default_data_dir()
    for n in names:  # fail on bad files before spending time on loading the model
        tasks_lib.load_task(n, data_dir, args.limit)

    model = runtime.load_from_args(args)
    scorer = model_scorer(model, batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens)
    t0 = time.time()
    results = evaluate(scorer, model.tokenizer, names, data_dir, args.limit,
                       progress=not args.no_progress)
    seconds = time.time() - t0
    print(f"\nzero-shot: {model.source} scheme={model.quant.get('scheme')} "
          f"dtype={np.dtype(model.compute_dtype).name} limit={args.limit} ({seconds:.0f} s)")
    print(format_table(results))

    out = args.json
    if out is None and args.ckpt:
        name = "zeroshot.json" if args.limit is None else f"zeroshot_limit{args.limit}.json"
        out = os.path.join(args.ckpt, name)
    if out:
        merged = {}
        if os.path.exists(out):  # tasks run separately accumulate in one file
            with open(out) as f:
                merged = json.load(f)
        merged |= results
        with open(out, "w") as f:
            json.dump(merged, f)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
