"""Hugging Face transformers integration: a tiny randomly initialised Llama under 2 and 4 gloo
ranks gives the single-process logits and parameter gradients (no weights are downloaded)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from odysseus_kernels import comm  # noqa: E402
from tests.distributed import run_world  # noqa: E402

IMPLS = ["odysseus_ring", "odysseus_zigzag", "odysseus_token_ring", "odysseus_ulysses", "odysseus_usp",
         "odysseus_allgather_kv"]


def _tiny_llama(impl):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, attention_dropout=0.0)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=impl, dtype=torch.float64)


def _check(impls, packed):
    import odysseus_kernels as ok
    import odysseus_kernels.integrations.transformers as okhf

    info = comm.group_info()
    n = info.size
    L = 8 * n
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (2, L), generator=g)
    cu = [0, 2 * n, 8 * n] if packed else None
    w = torch.randn(2, L, 64, generator=g, dtype=torch.float64)  # loss = sum(logits * w)
    ref = _tiny_llama("sdpa")  # float64 math (eager softmaxes in fp32)
    pos = None
    if packed:
        pos = torch.cat([torch.arange(cu[i + 1] - cu[i]) for i in range(len(cu) - 1)]).expand(2, -1)
        # the reference attends within documents through an explicit 4D mask
        doc = torch.searchsorted(torch.tensor(cu), torch.arange(L), right=True)
        allowed = (doc.view(-1, 1) == doc.view(1, -1)) & torch.ones(L, L, dtype=torch.bool).tril()
        mask = torch.zeros(L, L, dtype=torch.float64).masked_fill(~allowed, float("-inf")).expand(2, 1, L, L)
        logits_ref = ref(input_ids=ids, position_ids=pos, attention_mask=mask).logits
    else:
        logits_ref = ref(input_ids=ids).logits
    (logits_ref * w).sum().backward()
    errs = {}
    for impl in impls:
        model = _tiny_llama(impl)
        if impl == "odysseus_usp":
            gr = ok.usp_groups(2)
            okhf.configure(model, ulysses_group=gr.ulysses_group, ring_group=gr.ring_group)
        batch = okhf.shard_inputs(ids, attn_implementation=impl, cu_seqlens=cu)
        layout = okhf.IMPLEMENTATIONS[impl][1]
        if packed:
            layout = "doc_" + layout
        logits = model(**batch).logits
        sh = (lambda t: ok.shard_packed(t, cu, layout=layout)[0]) if packed else \
            (lambda t: ok.shard_sequence(t, layout=layout))
        (logits * sh(w)).sum().backward()
        ok.layers.sync_replicated_grads(list(model.parameters()))
        err = (logits - sh(logits_ref.detach())).abs().max().item()
        for (name, p), (_, pr) in zip(model.named_parameters(), ref.named_parameters()):
            err = max(err, ((p.grad - pr.grad).abs().max() / pr.grad.abs().max().clamp_min(1e-30)).item())
        errs[impl] = err
    return errs


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("packed", [False, True], ids=["stream", "packed"])
def test_hf_llama_matches_single_process(n, packed):
    impls = [i for i in IMPLS if not (i == "odysseus_usp" and n % 2)]
    for errs in run_world(_check, n, impls, packed, timeout=600):
        assert set(errs) == set(impls)
        bad = {k: v for k, v in errs.items() if not v < 1e-10}
        assert not bad, bad
