"""Batched continuation log-likelihoods, as lm-evaluation-harness's `loglikelihood` computes them.

A request is (context, continuation). Its score is sum_i log p(cont_i | context, cont_<i) and
`is_greedy` (every continuation token is the argmax). Shape letters: B batch rows, T padded row
length, V vocabulary, Q scored (row, position, token) triples of one batch.

Work saved, beyond padding rows of similar length into fixed-shape batches:
- A request only needs the logits of its input tokens (context + continuation minus the last
  token). When that input is a prefix of another request's input, the longer row's forward pass
  already holds its logits (the model is causal), so it is read from there: single-token choices
  with a shared context (BoolQ " no"/" yes") cost one row, and identical requests cost one row.
- The model's [B, T, V] logits stay on the device: one jitted function reduces them to the Q
  log-probabilities and argmax flags that the requests need.
"""

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# (tokens [B, T], positions [B, T]) -> logits [B, T, V]; positions -1 mark padding. Typically
# runtime.LoadedModel.logits: jitted itself, and stateful for schemes with online outlier
# detection (mix8), which is why it is called as is rather than traced into our jit.
LogitsFn = Callable[[Any, Any], jax.Array]


@dataclasses.dataclass(frozen=True)
class Score:
    loglik: float     # summed log-probability of the continuation tokens
    is_greedy: bool   # every continuation token is the model's argmax
    n_tokens: int     # continuation tokens scored


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: trailing whitespace moves from context to continuation, then the
    whole string is encoded once and split at len(encode(context)), so the continuation's tokens
    are those the model sees in the joint text."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    ctx = tokenizer.encode(context, add_special_tokens=False)
    return list(whole[:len(ctx)]), list(whole[len(ctx):])


def encode_pairs(tokenizer: Any, requests: Sequence[tuple[str, str]]
                 ) -> list[tuple[list[int], list[int]]]:
    """`encode_pair` for many requests, with the tokenizer's batched encoding."""
    ctxs, wholes = [], []
    for context, continuation in requests:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        ctxs.append(context)
        wholes.append(context + continuation)
    enc_ctx = tokenizer(ctxs, add_special_tokens=False)["input_ids"] if ctxs else []
    enc_whole = tokenizer(wholes, add_special_tokens=False)["input_ids"] if ctxs else []
    return [(list(w[:len(c)]), list(w[len(c):])) for c, w in zip(enc_ctx, enc_whole)]


def bucket_length(n: int) -> int:
    """Row length padded to few distinct values (each is one compile): multiples of 32 up to 128,
    of 64 up to 512, of 128 up to 2048, of 512 beyond."""
    for limit, step in ((128, 32), (512, 64), (2048, 128)):
        if n <= limit:
            return max(step, -(-n // step) * step)
    return -(-n // 512) * 512


@jax.jit
def pick(logits, q_row, q_pos, q_tok):
    """log p(q_tok) and whether q_tok is the argmax, at Q points (q_row, q_pos) of logits [B, T, V].
    Returns ([Q] float32, [Q] bool)."""
    logits = logits.astype(jnp.float32)                        # [B, T, V]
    lse = jax.nn.logsumexp(logits, axis=-1)                    # [B, T]
    best = jnp.argmax(logits, axis=-1)                         # [B, T]
    logp = logits[q_row, q_pos, q_tok] - lse[q_row, q_pos]     # [Q]
    greedy = best[q_row, q_pos] == q_tok                       # [Q]
    return logp, greedy


@dataclasses.dataclass(frozen=True)
class _Prepared:
    inputs: tuple[int, ...]   # tokens fed to the model: (context + continuation)[:-1], truncated
    targets: tuple[int, ...]  # the continuation tokens, scored at the last len(targets) inputs


def _prepare(ctx: Sequence[int], cont: Sequence[int], max_length: int) -> _Prepared:
    if not cont:
        raise ValueError(f"empty continuation after tokenization (context ends {list(ctx[-5:])})")
    if len(cont) > max_length:
        raise ValueError(f"continuation of {len(cont)} tokens exceeds {max_length=}")
    if not ctx:
        raise ValueError("empty context: lm-eval would prefix an end-of-text token; not supported")
    whole = (list(ctx) + list(cont))[-(max_length + 1):]  # truncate from the left, as lm-eval
    return _Prepared(inputs=tuple(whole[:-1]), targets=tuple(cont))


def _cover_rows(inputs: list[tuple[int, ...]]) -> tuple[list[tuple[int, ...]], list[int]]:
    """Distinct rows such that every input is a prefix of one of them; row index per input.

    In lexicographic order a sequence that is a prefix of any other is a prefix of its successor,
    so one backwards pass maps each input to the longest row that starts with it."""
    uniq = sorted(set(inputs))
    owner = list(range(len(uniq)))
    for i in range(len(uniq) - 2, -1, -1):
        a, b = uniq[i], uniq[i + 1]
        if len(a) <= len(b) and b[:len(a)] == a:
            owner[i] = owner[i + 1]
    row_ids = sorted(set(owner))
    renumber = {u: r for r, u in enumerate(row_ids)}
    index = {seq: renumber[owner[i]] for i, seq in enumerate(uniq)}
    return [uniq[u] for u in row_ids], [index[x] for x in inputs]


class Scorer:
    """Scores token-level requests with `logits_fn` in padded, length-sorted batches.

    max_length: the model's context (longer inputs are cut from the left, as lm-eval does).
    batch_size: rows per batch at most; max_batch_tokens bounds B * T (memory of [B, T, V]).
    """

    def __init__(self, logits_fn: LogitsFn, *, max_length: int, batch_size: int = 32,
                 max_batch_tokens: int = 4096):
        if batch_size < 1 or max_batch_tokens < 1:
            raise ValueError(f"{batch_size=} and {max_batch_tokens=} must be >= 1")
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.logits_fn = logits_fn

    def rows_per_batch(self, t: int) -> int:
        """Power of two so that few (B, T) shapes occur."""
        b = max(1, min(self.batch_size, self.max_batch_tokens // t))
        return 1 << (b.bit_length() - 1)

    def plan(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]):
        """Rows (longest first), the row of each request, and the batches as row-index ranges."""
        prepared = [_prepare(c, k, self.max_length) for c, k in pairs]
        rows, row_of = _cover_rows([p.inputs for p in prepared])
        order = sorted(range(len(rows)), key=lambda r: -len(rows[r]))
        rank = {r: i for i, r in enumerate(order)}
        rows = [rows[r] for r in order]
        row_of = [rank[r] for r in row_of]
        batches, start = [], 0
        while start < len(rows):
            t = bucket_length(len(rows[start]))
            b = self.rows_per_batch(t)
            batches.append((start, min(start + b, len(rows)), b, t))
            start += b
        return prepared, rows, row_of, batches

    def __call__(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                 progress: Callable[[int, int], None] | None = None) -> list[Score]:
        """pairs: (context token ids, continuation token ids) per request.
        progress(done, total): called after each batch with counts of real (unpadded) tokens."""
        prepared, rows, row_of, batches = self.plan(pairs)
        total, done = sum(len(r) for r in rows), 0
        by_row: dict[int, list[int]] = {}
        for i, r in enumerate(row_of):
            by_row.setdefault(r, []).append(i)
        logp = [np.zeros(len(p.targets)) for p in prepared]
        greedy = [np.zeros(len(p.targets), bool) for p in prepared]

        for start, stop, b, t in batches:
            tokens = np.zeros((b, t), np.int32)   # [B, T]
            positions = np.full((b, t), -1, np.int32)
            positions[:, 0] = 0  # padding rows get one real token so no attention row is empty
            q_row, q_pos, q_tok, owners = [], [], [], []
            for j, r in enumerate(range(start, stop)):
                seq = rows[r]
                tokens[j, :len(seq)] = seq
                positions[j, :len(seq)] = np.arange(len(seq))
                for i in by_row[r]:
                    p = prepared[i]
                    first = len(p.inputs) - len(p.targets)
                    q_row += [j] * len(p.targets)
                    q_pos += range(first, len(p.inputs))
                    q_tok += p.targets
                    owners.append((i, len(p.targets)))
            n_q = len(q_row)
            q_pad = -(-n_q // (b * t)) * (b * t)  # a multiple of B * T: usually just B * T
            pad = q_pad - n_q
            lp, gr = pick(self.logits_fn(tokens, positions),
                          np.asarray(q_row + [0] * pad, np.int32),
                          np.asarray(q_pos + [0] * pad, np.int32),
                          np.asarray(q_tok + [0] * pad, np.int32))
            lp, gr = np.asarray(lp, np.float64), np.asarray(gr)
            k = 0
            for i, n in owners:
                logp[i], greedy[i] = lp[k:k + n], gr[k:k + n]
                k += n
            done += sum(len(rows[r]) for r in range(start, stop))
            if progress is not None:
                progress(done, total)

        return [Score(loglik=float(lp.sum()), is_greedy=bool(g.all()), n_tokens=len(lp))
                for lp, g in zip(logp, greedy)]
