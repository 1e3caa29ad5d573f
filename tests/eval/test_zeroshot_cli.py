"""`python -m mixq_jax.eval.zeroshot` end to end on the tiny real Llama (stories260K), and metrics."""

import json

import numpy as np
import pytest

from mixq_jax.eval import loglik, tasks, zeroshot
from tests.conftest import asset


def test_cli_json_and_table(tmp_path, capsys):
    model = asset("models/stories260K")
    out = tmp_path / "zs.json"
    # BoolQ passages exceed the model's 512 positions: left truncation runs too.
    rc = zeroshot.main(["--model", str(model), "--fp32", "--limit", "2", "--json", str(out),
                        "--no-progress", "--data-dir", str(asset("data/zeroshot"))])
    assert rc == 0
    table = capsys.readouterr().out
    assert "task" in table and "stderr" in table and "lambada_openai | perplexity" in table
    res = json.loads(out.read_text())
    assert list(res) == list(zeroshot.ALL_TASKS)
    n_choices = {"arc_easy": 4, "arc_challenge": 4, "piqa": 2, "hellaswag": 4, "winogrande": 2,
                 "boolq": 2, "lambada_openai": 1}
    for name, r in res.items():
        assert r["n"] == 2 and [len(x) for x in r["loglik"]] == [n_choices[name]] * 2
        assert 0 <= r["acc"] <= 1 and "acc_stderr" in r
        assert ("acc_norm" in r) == (name in ("arc_easy", "arc_challenge", "piqa", "hellaswag"))
        assert all(v < 0 for x in r["loglik"] for v in x)
    assert res["lambada_openai"]["perplexity"] > 1


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        zeroshot.main(["--model", "x", "--tasks", "piqa,mmlu"])
    assert "unknown zero-shot task 'mmlu'" in capsys.readouterr().err
    (tmp_path / "piqa.jsonl").write_text('{"query": "Question: q\\n", "choices": ["a", "b"]}\n')
    # the task files are checked before the model is loaded: the bogus --model is never reached
    with pytest.raises(tasks.TaskFormatError, match="piqa.jsonl:1: missing key 'gold'"):
        zeroshot.main(["--model", "no/such/model", "--tasks", "piqa", "--data-dir", str(tmp_path)])
    (tmp_path / "piqa.jsonl").write_text("")
    with pytest.raises(tasks.TaskFormatError, match="holds no items"):
        zeroshot.main(["--model", "no/such/model", "--tasks", "piqa", "--data-dir", str(tmp_path)])


def test_metrics_as_lm_eval():
    def s(*lls, greedy=False):
        return [loglik.Score(loglik=v, is_greedy=greedy, n_tokens=1) for v in lls]

    items = [tasks.Item(requests=(("c", " a"), ("c", " bbbb")), gold=1, choice_lengths=(1, 4)),
             tasks.Item(requests=(("c", " a"), ("c", " bbbb")), gold=0, choice_lengths=(1, 4))]
    # item 0: raw argmax 0 (wrong), per-char argmax 1 (right); item 1: both 0 (right)
    r = zeroshot.task_metrics(tasks.Kind.MULTIPLE_CHOICE, items, [s(-2.0, -4.0), s(-1.0, -8.0)])
    assert (r["acc"], r["acc_norm"], r["n"]) == (0.5, 1.0, 2)
    assert r["acc_stderr"] == pytest.approx(np.std([0, 1], ddof=1) / np.sqrt(2))
    assert r["loglik"] == [[-2.0, -4.0], [-1.0, -8.0]]
    r = zeroshot.task_metrics(tasks.Kind.CHOICE, items, [s(-2.0, -4.0), s(-1.0, -8.0)])
    assert "acc_norm" not in r and r["acc"] == 0.5
    one = tasks.Item(requests=(("c", " w"),), gold=0, choice_lengths=(1,))
    r = zeroshot.task_metrics(tasks.Kind.LAST_WORD, [one, one], [s(-1.0, greedy=True), s(-3.0)])
    assert r["acc"] == 0.5 and r["perplexity"] == pytest.approx(np.exp(2.0))


def test_ckpt_json_beside_checkpoint(tmp_path):
    from mixq_jax import convert

    ckpt = tmp_path / "ckpt"
    convert.convert(str(asset("models/stories260K")), "bf16", str(ckpt))
    args = ["--ckpt", str(ckpt), "--tasks", "winogrande", "--limit", "3", "--no-progress"]
    assert zeroshot.main(args) == 0
    assert zeroshot.main(args[:3] + ["piqa"] + args[4:]) == 0  # a second run merges its task
    res = json.loads((ckpt / "zeroshot_limit3.json").read_text())
    assert sorted(res) == ["piqa", "winogrande"] and res["piqa"]["n"] == 3
