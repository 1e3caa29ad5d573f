"""Task readers (mixq_jax.eval.tasks): lm-eval formatting on the real files, and clear errors."""

import bz2
import json

import pytest

from tests.conftest import asset
from mixq_jax.eval import tasks
from mixq_jax.eval.tasks import TaskFormatError

COUNTS = {"arc_easy": 2376, "arc_challenge": 1172, "piqa": 1838, "hellaswag": 10042,
          "winogrande": 1267, "boolq": 3270, "lambada_openai": 5153}


@pytest.fixture(scope="module")
def data_dir():
    return asset("data/zeroshot")


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_real_files(data_dir, name):
    items = tasks.load_task(name, data_dir)
    assert len(items) == COUNTS[name]
    for it in items:
        assert 0 <= it.gold < len(it.requests) and len(it.choice_lengths) == len(it.requests)
        for ctx, cont in it.requests:
            assert ctx and ctx == ctx.rstrip() and cont.startswith(" ") and cont.strip()
    assert len(tasks.load_task(name, data_dir, limit=5)) == 5


def test_prompts_as_lm_eval(data_dir):
    arc = tasks.load_task("arc_easy", data_dir, limit=1)[0]
    assert arc.requests[0] == (
        "Question: Which statement best explains why photosynthesis is the foundation of most "
        "food webs?\nAnswer:", " Sunlight is the source of energy for nearly all ecosystems.")
    assert arc.choice_lengths[0] == len("Sunlight is the source of energy for nearly all ecosystems.")
    piqa = tasks.load_task("piqa", data_dir, limit=1)[0]
    assert piqa.requests[0][0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    boolq = tasks.load_task("boolq", data_dir, limit=1)[0]
    ctx = boolq.requests[0][0]
    assert ctx.startswith("All biomass goes") and ctx.endswith("that produces?\nAnswer:")
    assert [c for _, c in boolq.requests] == [" no", " yes"] and boolq.gold == 0
    wino = tasks.load_task("winogrande", data_dir, limit=1)[0]
    assert wino.requests == (("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
                             ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."))
    lam = tasks.load_task("lambada_openai", data_dir, limit=1)[0]
    assert lam.requests[0][0].endswith("I don't care about") and lam.requests[0][1] == " signs"
    hs = tasks.load_task("hellaswag", data_dir, limit=3)
    # lm-eval: activity_label + ": " + ctx_a + " " + ctx_b.capitalize()
    assert hs[0].requests[0] == ("Roof shingle removal: A man is sitting on a roof. He",
                                 " is using wrap to wrap a pair of skis.")
    assert hs[2].requests[0][0].endswith("in the background. The child and a different man")
    assert hs[0].gold == 3


def test_hellaswag_preprocess():
    assert tasks.hellaswag_preprocess(" How to x [title] Do y. [step] Then  z ") == "How to x. Do y. Then z"
    assert tasks._capitalize_ctx_b("Zumba: . a dance team") == "Zumba: . A dance team"
    assert tasks._capitalize_ctx_b("Health: Drink water. Water is good.") == "Health: Drink water. Water is good."


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize("line, match", [
    ('{"query": "Question: q", "choices": ["a", "b"]', "not valid JSON"),
    ('["Question: q"]', "expected a JSON object"),
    ('{"query": "Question: q", "choices": ["a", "b"]}', "missing key 'gold'"),
    ('{"query": "Question: q", "choices": ["a", "b"], "gold": 2}', "gold=2 out of range for 2 choices"),
    ('{"query": "Question: q", "choices": ["a", 1], "gold": 0}', "'choices' must be list of strings"),
    ('{"query": "q", "choices": ["a", "b"], "gold": 0}', "should start with 'Question: '"),
])
def test_malformed_lines(tmp_path, line, match):
    good = '{"query": "Question: fine", "choices": ["a", "b"], "gold": 1}'
    write(tmp_path / "arc_easy.jsonl", [good, line])
    with pytest.raises(TaskFormatError, match=match) as e:
        tasks.load_task("arc_easy", tmp_path)
    assert "arc_easy.jsonl:2" in str(e.value)  # names the file and line


def test_malformed_hellaswag(tmp_path):
    path = tmp_path / "hellaswag_val.txt.bz2"
    path.write_bytes(bz2.compress(b"Label: ctx\n1\na\nb\nc\n"))
    with pytest.raises(TaskFormatError, match="5 lines is not a multiple of 6"):
        tasks.load_task("hellaswag", tmp_path)
    path.write_bytes(bz2.compress(b"Label: ctx\n7\na\nb\nc\nd\n"))
    with pytest.raises(TaskFormatError, match="gold must be 0..3"):
        tasks.load_task("hellaswag", tmp_path)


def test_unknown_empty_missing(tmp_path):
    with pytest.raises(ValueError, match="unknown zero-shot task 'mmlu'; known: arc_easy"):
        tasks.load_task("mmlu", tmp_path)
    with pytest.raises(FileNotFoundError, match="no file .*piqa.jsonl"):
        tasks.load_task("piqa", tmp_path)
    write(tmp_path / "piqa.jsonl", ["", "  "])
    with pytest.raises(TaskFormatError, match="holds no items"):
        tasks.load_task("piqa", tmp_path)
    write(tmp_path / "boolq.jsonl", [json.dumps({"query": "Passage: p\nQuestion: q?", "choices": ["no", "yes"],
                                                  "gold": 1})])
    with pytest.raises(ValueError, match="limit=0"):
        tasks.load_task("boolq", tmp_path, limit=0)
