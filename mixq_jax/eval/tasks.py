"""Zero-shot task files -> scoring requests, formatted as lm-evaluation-harness formats them.

The files (../shared/data/zeroshot, see ../shared/README.md) follow llm-foundry's local ICL layout,
whose queries are partly formatted already. Each reader below turns one file into `Item`s whose
(context, continuation) strings equal what lm-eval's task of the same name scores:

| task | lm-eval doc_to_text -> context | continuation(s) | metrics |
|---|---|---|---|
| arc_easy, arc_challenge | "Question: {q}\\nAnswer:" (file: "Question: {q}") | " " + choice | acc, acc_norm |
| piqa | "Question: {goal}\\nAnswer:" (file: "Question: {goal}\\n") | " " + solution | acc, acc_norm |
| hellaswag | preprocess(label + ": " + ctx_a + " " + ctx_b.capitalize()) | " " + preprocess(ending) | acc, acc_norm |
| winogrande | sentence[:blank] + option (partial scoring: one context per option) | " " + rest of sentence | acc |
| boolq | "{passage}\\nQuestion: {question}?\\nAnswer:" (file: "Passage: {passage}\\nQuestion: ...?") | " no", " yes" | acc |
| lambada_openai | text without its last word | " " + last word | acc (greedy), perplexity |

HellaSwag: the file holds "activity_label: ctx" with ctx = ctx_a + " " + ctx_b unsplit, and
lm-eval capitalizes ctx_b. ctx_b is the unfinished last sentence, so we take the text after the
last sentence end (". ", "! ", "? ") and apply `str.capitalize` when it starts in lower case
(3244 of 10042 items, all of the ActivityNet kind, e.g. "... on a roof. he" -> "... on a roof. He").
lm-eval's `preprocess` is then applied to query and endings; it is idempotent on the parts the file
already cleaned (" [title]" -> ". ") and still removes the few leftover "[...]" spans.
"""

import bz2
import dataclasses
import enum
import json
import pathlib
import re
from typing import Any, Callable


class Kind(enum.Enum):
    MULTIPLE_CHOICE = "multiple_choice"  # acc by summed loglik, acc_norm by loglik / len(choice)
    CHOICE = "choice"                    # acc only (lm-eval defines no acc_norm for the task)
    LAST_WORD = "last_word"              # LAMBADA: acc = greedy match, perplexity of the word


@dataclasses.dataclass(frozen=True, kw_only=True)
class Item:
    """One task document: one (context, continuation) request per choice (one for LAMBADA)."""
    requests: tuple[tuple[str, str], ...]
    gold: int
    # lm-eval normalizes acc_norm by len(choice string) in characters, without the leading space
    # (its docs say "bytes"; the two agree on these ASCII-only files up to a handful of items).
    choice_lengths: tuple[int, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task:
    name: str
    filename: str
    kind: Kind
    reader: Callable[[pathlib.Path], list[Item]]


class TaskFormatError(ValueError):
    """A task file line that does not have the expected layout."""


# ---------------------------------------------------------------- helpers


def _jsonl(path: pathlib.Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskFormatError(f"{path}:{lineno}: not valid JSON ({e.msg}): {line[:80]!r}") from None
            if not isinstance(row, dict):
                raise TaskFormatError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append((lineno, row))
    return rows


def _field(path, lineno, row, key, typ):
    if key not in row:
        raise TaskFormatError(f"{path}:{lineno}: missing key {key!r} (has {sorted(row)})")
    value = row[key]
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if typ is list:
        ok = ok and len(value) > 0 and all(isinstance(v, str) for v in value)
    if not ok:
        raise TaskFormatError(f"{path}:{lineno}: {key!r} must be {typ.__name__}"
                              f"{' of strings' if typ is list else ''}, got {value!r:.80}")
    return value


def _gold(path, lineno, row, n_choices):
    gold = _field(path, lineno, row, "gold", int)
    if not 0 <= gold < n_choices:
        raise TaskFormatError(f"{path}:{lineno}: {gold=} out of range for {n_choices} choices")
    return gold


def _choice_item(context: str, choices: list[str], gold: int) -> Item:
    return Item(requests=tuple((context, " " + c) for c in choices), gold=gold,
                choice_lengths=tuple(len(c) for c in choices))


def _strip_prefix(path, lineno, text, prefix):
    if not text.startswith(prefix):
        raise TaskFormatError(f"{path}:{lineno}: query should start with {prefix!r}: {text[:60]!r}")
    return text[len(prefix):]


# ---------------------------------------------------------------- readers


def read_arc(path: pathlib.Path) -> list[Item]:
    items = []
    for lineno, row in _jsonl(path):
        query = _field(path, lineno, row, "query", str)
        _strip_prefix(path, lineno, query, "Question: ")
        choices = _field(path, lineno, row, "choices", list)
        items.append(_choice_item(query + "\nAnswer:", choices, _gold(path, lineno, row, len(choices))))
    return items


def read_piqa(path: pathlib.Path) -> list[Item]:
    items = []
    for lineno, row in _jsonl(path):
        query = _field(path, lineno, row, "query", str)
        _strip_prefix(path, lineno, query, "Question: ")
        if not query.endswith("\n"):
            raise TaskFormatError(f"{path}:{lineno}: piqa query should end with a newline: {query[-40:]!r}")
        choices = _field(path, lineno, row, "choices", list)
        items.append(_choice_item(query + "Answer:", choices, _gold(path, lineno, row, len(choices))))
    return items


def read_boolq(path: pathlib.Path) -> list[Item]:
    items = []
    for lineno, row in _jsonl(path):
        query = _field(path, lineno, row, "query", str)
        # lm-eval's boolq prompt has no "Passage: " label; the question already ends with "?".
        body = _strip_prefix(path, lineno, query, "Passage: ")
        if "\nQuestion: " not in body:
            raise TaskFormatError(f"{path}:{lineno}: boolq query has no '\\nQuestion: ': {query[-60:]!r}")
        choices = _field(path, lineno, row, "choices", list)
        if choices != ["no", "yes"]:
            raise TaskFormatError(f"{path}:{lineno}: boolq choices must be ['no', 'yes'], got {choices}")
        items.append(Item(requests=((body + "\nAnswer:", " no"), (body + "\nAnswer:", " yes")),
                          gold=_gold(path, lineno, row, 2), choice_lengths=(2, 3)))
    return items


def read_winogrande(path: pathlib.Path) -> list[Item]:
    items = []
    for lineno, row in _jsonl(path):
        contexts = _field(path, lineno, row, "context_options", list)
        continuation = _field(path, lineno, row, "continuation", str)
        gold = _gold(path, lineno, row, len(contexts))
        cont = " " + continuation.strip()
        items.append(Item(requests=tuple((c, cont) for c in contexts), gold=gold,
                          choice_lengths=tuple(len(c) for c in contexts)))
    return items


def read_lambada(path: pathlib.Path) -> list[Item]:
    items = []
    for lineno, row in _jsonl(path):
        context = _field(path, lineno, row, "context", str)
        word = _field(path, lineno, row, "continuation", str)
        if not word.strip():
            raise TaskFormatError(f"{path}:{lineno}: empty lambada continuation")
        # lm-eval: context = " ".join(text.split(" ")[:-1]), continuation = " " + last word.
        items.append(Item(requests=((context, " " + word),), gold=0, choice_lengths=(len(word),)))
    return items


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag `preprocess` (tasks/hellaswag/utils.py)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")  # brackets are artifacts of WikiHow scraping
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


_SENTENCE_END = re.compile(r'[.!?]"? ')


def _capitalize_ctx_b(ctx: str) -> str:
    """Re-applies lm-eval's ctx_b.capitalize() to the unfinished last sentence of ctx."""
    ends = list(_SENTENCE_END.finditer(ctx))
    start = ends[-1].end() if ends else 0
    tail = ctx[start:]
    if tail[:1].islower():
        return ctx[:start] + tail.capitalize()
    return ctx


def read_hellaswag(path: pathlib.Path) -> list[Item]:
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise TaskFormatError(f"{path}: {len(lines)} lines is not a multiple of 6 "
                              "(activity_label: ctx, gold, 4 endings per item)")
    items = []
    for start in range(0, len(lines), 6):
        query, gold, *endings = lines[start:start + 6]
        lineno = start + 1
        label, sep, ctx = query.partition(": ")
        if not sep or not label:
            raise TaskFormatError(f"{path}:{lineno}: expected 'activity_label: ctx', got {query[:80]!r}")
        if not re.fullmatch(r"[0-3]", gold.strip()):
            raise TaskFormatError(f"{path}:{lineno + 1}: gold must be 0..3, got {gold[:20]!r}")
        if not all(e.strip() for e in endings):
            raise TaskFormatError(f"{path}:{lineno + 2}: empty ending in item at line {lineno}")
        context = hellaswag_preprocess(label + ": " + _capitalize_ctx_b(ctx))
        choices = [hellaswag_preprocess(e) for e in endings]
        items.append(_choice_item(context, choices, int(gold)))
    return items


TASKS: dict[str, Task] = {t.name: t for t in [
    Task(name="arc_easy", filename="arc_easy.jsonl", kind=Kind.MULTIPLE_CHOICE, reader=read_arc),
    Task(name="arc_challenge", filename="arc_challenge.jsonl", kind=Kind.MULTIPLE_CHOICE,
         reader=read_arc),
    Task(name="piqa", filename="piqa.jsonl", kind=Kind.MULTIPLE_CHOICE, reader=read_piqa),
    Task(name="hellaswag", filename="hellaswag_val.txt.bz2", kind=Kind.MULTIPLE_CHOICE,
         reader=read_hellaswag),
    Task(name="winogrande", filename="winogrande.jsonl", kind=Kind.CHOICE, reader=read_winogrande),
    Task(name="boolq", filename="boolq.jsonl", kind=Kind.CHOICE, reader=read_boolq),
    Task(name="lambada_openai", filename="lambada_openai.jsonl", kind=Kind.LAST_WORD,
         reader=read_lambada),
]}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown zero-shot task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def load_task(name: str, data_dir: str | pathlib.Path, limit: int | None = None) -> list[Item]:
    """Items of task `name` from `data_dir`; the first `limit` of them when given (as lm-eval)."""
    task = get_task(name)
    path = pathlib.Path(data_dir) / task.filename
    if not path.is_file():
        raise FileNotFoundError(f"task {name!r}: no file {path} (set --data-dir or MIXQ_DATA_DIR)")
    items = task.reader(path)
    if not items:
        raise TaskFormatError(f"task {name!r}: {path} holds no items")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"{limit=} must be >= 1")
        items = items[:limit]
    return items
