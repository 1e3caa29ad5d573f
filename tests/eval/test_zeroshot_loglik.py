"""Batched log-likelihood scoring (mixq_jax.eval.loglik) against a plain per-request loop."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixq_jax.eval import loglik

V = 37  # toy vocabulary


def toy_model(params):
    return lambda tokens, positions: toy_logits(params, tokens, positions)


def toy_logits(params, tokens, positions):
    """A causal toy LM: logits at t depend on all real tokens <= t (masked cumulative mean).
    tokens, positions [B, T] -> [B, T, V]."""
    emb, w, pos_emb = params["emb"], params["w"], params["pos"]
    valid = (positions >= 0)[..., None]                                   # [B, T, 1]
    x = jnp.where(valid, emb[tokens] + pos_emb[jnp.maximum(positions, 0)], 0.0)
    h = jnp.cumsum(x, axis=1) / jnp.maximum(jnp.cumsum(valid, axis=1), 1)  # [B, T, D]
    return jnp.tanh(h) @ w * 4.0                                          # [B, T, V]


@pytest.fixture(scope="module")
def params():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    return {"emb": jax.random.normal(k1, (V, 16)), "w": jax.random.normal(k2, (16, V)),
            "pos": jax.random.normal(k3, (512, 16)) * 0.3}


def reference(params, ctx, cont, max_length):
    """One request, unbatched and unpadded: sum of log p(cont_i | prefix) and greedy flag."""
    whole = (list(ctx) + list(cont))[-(max_length + 1):]
    inp = np.asarray(whole[:-1], np.int32)[None]
    logits = toy_logits(params, inp, np.arange(inp.shape[1], dtype=np.int32)[None])[0]
    logp = jax.nn.log_softmax(logits[-len(cont):], axis=-1)
    idx = np.asarray(cont)
    return float(logp[np.arange(len(cont)), idx].sum()), bool((logits[-len(cont):].argmax(-1) == idx).all())


def random_requests(rng, n):
    """Multiple-choice-like requests: shared contexts, 1-token choices, duplicates, prefixes."""
    reqs = []
    for _ in range(n):
        ctx = list(rng.integers(1, V, rng.integers(1, 90)))
        for _ in range(rng.integers(1, 5)):
            reqs.append((ctx, list(rng.integers(1, V, rng.integers(1, 12)))))
        reqs.append((ctx, [int(rng.integers(1, V))]))  # single-token choices share a row
    reqs.append(reqs[0])                                 # exact duplicate
    reqs.append((reqs[1][0] + reqs[1][1][:1], reqs[1][1][1:] or [3]))  # request inside another
    return reqs


def test_batched_matches_per_request(params):
    rng = np.random.default_rng(0)
    reqs = random_requests(rng, 8)
    for ctx, _ in reqs[:6]:  # continuations the toy model predicts itself: is_greedy is True
        inp = np.asarray(ctx[-64:], np.int32)[None]
        best = toy_logits(params, inp, np.arange(inp.shape[1], dtype=np.int32)[None])[0, -1].argmax()
        reqs.append((ctx, [int(best)]))
    scorer = loglik.Scorer(toy_model(params), max_length=64, batch_size=8, max_batch_tokens=256)
    seen = []
    scores = scorer(reqs, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1] and len(seen) > 1  # several batches, all tokens done
    n_greedy = 0
    for (ctx, cont), s in zip(reqs, scores):
        ll, greedy = reference(params, ctx, cont, 64)  # max_length 64 < 100: left truncation too
        np.testing.assert_allclose(s.loglik, ll, atol=1e-4, rtol=1e-5)
        assert s.is_greedy == greedy and s.n_tokens == len(cont)
        n_greedy += greedy
    assert 0 < n_greedy < len(reqs)  # the greedy flag is exercised both ways


def test_shared_rows_are_computed_once(params):
    ctx = [5, 6, 7, 8]
    reqs = [(ctx, [9]), (ctx, [10]), (ctx, [9]), (ctx + [9], [11, 12]), (ctx, [9, 11, 12, 1])]
    scorer = loglik.Scorer(toy_model(params), max_length=100)
    _, rows, row_of, _ = scorer.plan(reqs)
    # every input (ctx + cont)[:-1] is a prefix of ctx + [9, 11, 12]: one row serves all five
    assert rows == [tuple(ctx + [9, 11, 12])] and row_of == [0] * 5


def test_cover_rows_property():
    rng = np.random.default_rng(1)
    seqs = [tuple(rng.integers(0, 3, rng.integers(1, 6))) for _ in range(200)]
    rows, row_of = loglik._cover_rows(seqs)
    assert len(set(rows)) == len(rows)
    for s, r in zip(seqs, row_of):
        assert rows[r][:len(s)] == s
    for a, b in itertools.permutations(rows, 2):
        assert b[:len(a)] != a, "a row that is a prefix of another row was kept"


class CharTokenizer:
    """Splits on characters but merges ' x' into one token, like BPE's leading-space tokens."""

    def encode(self, text, add_special_tokens=False):
        out, i = [], 0
        while i < len(text):
            n = 2 if text[i] == " " and i + 1 < len(text) else 1
            out.append(hash(text[i:i + n]) % 1000)
            i += n
        return out

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [self.encode(t) for t in texts]}


def test_encode_pair_moves_trailing_space():
    tok = CharTokenizer()
    ctx, cont = loglik.encode_pair(tok, "ab ", "c")  # scored as "ab" + " c", one ' c' token
    assert ctx == tok.encode("ab") and cont == tok.encode(" c") and len(cont) == 1
    assert loglik.encode_pairs(tok, [("ab ", "c"), ("x", " yz")]) == [
        (ctx, cont), loglik.encode_pair(tok, "x", " yz")]


def test_bucket_length_and_rows():
    assert [loglik.bucket_length(n) for n in (1, 32, 33, 129, 513, 2049)] == [32, 32, 64, 192, 640, 2560]
    s = loglik.Scorer(toy_model(None), max_length=8, batch_size=32, max_batch_tokens=4096)
    assert [s.rows_per_batch(t) for t in (32, 128, 192, 4096, 8192)] == [32, 32, 16, 1, 1]


def test_bad_requests(params):
    s = loglik.Scorer(toy_model(params), max_length=8)
    with pytest.raises(ValueError, match="empty continuation"):
        s([([1, 2], [])])
    with pytest.raises(ValueError, match="exceeds max_length=8"):
        s([([1], list(range(1, 11)))])
    with pytest.raises(ValueError, match="batch_size=0"):
        loglik.Scorer(toy_model(params), max_length=8, batch_size=0)
