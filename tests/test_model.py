"""The Llama-style model: blockwise (chunked) MLP is exact and its activation memory does not grow
with the local sequence length."""
import pytest
import torch

from odysseus_kernels.models import LlamaConfig, LlamaModel, make_batch, token_loss_sum
from odysseus_kernels.models.llama import MLP
from odysseus_kernels.playground.runner import _SavedBytes


@pytest.mark.parametrize("seq, chunk", [pytest.param(63, 16, id="S63-C16"), pytest.param(64, 64, id="S64-C64"),
                                        pytest.param(40, 7, id="S40-C7")])
def test_chunked_mlp_matches_dense(seq, chunk):
    torch.manual_seed(seq)
    dense = MLP(LlamaConfig(hidden=24, intermediate=40)).double()
    blockwise = MLP(LlamaConfig(hidden=24, intermediate=40, mlp_chunk_size=chunk)).double()
    blockwise.load_state_dict(dense.state_dict())
    x = torch.randn(2, seq, 24, dtype=torch.float64)
    dy = torch.randn(2, seq, 24, dtype=torch.float64)
    grads = []
    for m in (dense, blockwise):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        y.backward(dy)
        grads.append((y.detach(), xi.grad, *[p.grad for p in m.parameters()]))
        m.zero_grad()
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _mlp_saved_bytes(seq, chunk):
    m = MLP(LlamaConfig(hidden=32, intermediate=256, mlp_chunk_size=chunk))
    x = torch.randn(1, seq, 32, requires_grad=True)
    saved = _SavedBytes()
    with saved.track():
        m(x)
    return saved.bytes - x.numel() * 4  # beyond the block's own input


def test_chunked_mlp_activation_memory_is_flat_in_sequence_length():
    dense = [_mlp_saved_bytes(s, None) for s in (128, 512)]
    chunked = [_mlp_saved_bytes(s, 32) for s in (128, 512)]
    # dense: the [B, S, intermediate] activations grow with S; blockwise: each recomputed block
    # saves only its input (counted above as x), whatever S
    assert dense[1] - dense[0] >= 3 * (512 - 128) * 256 * 4
    assert chunked == [0, 0]


def test_model_loss_is_finite_and_chunking_does_not_change_it():
    cfg = LlamaConfig(layers=2, hidden=32, heads=4, kv_heads=2, intermediate=64, vocab_size=50)
    ids, labels = make_batch(cfg, 2, 24, seed=3)
    losses = []
    for chunk in (None, 5):
        model = LlamaModel(cfg.with_(mlp_chunk_size=chunk)).double()
        losses.append(token_loss_sum(model(ids, torch.arange(24)), labels).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)
    assert 0 < losses[0] < float("inf")


@pytest.mark.parametrize("kw, match", [
    pytest.param(dict(hidden=30, heads=4), r"hidden \(30\) must be divisible by heads \(4\)", id="hidden-heads"),
    pytest.param(dict(heads=4, kv_heads=3), r"heads \(4\) must be divisible by kv_heads \(3\)", id="heads-kv"),
    pytest.param(dict(linear_layers="some"), "linear_layers", id="linear-layers"),
    pytest.param(dict(layers=0), "layers: expected a positive int", id="layers"),
])
def test_one_model_shape_and_one_rule_set_for_model_cost_model_and_playground(kw, match):
    from odysseus_kernels.costmodel import ModelConfig
    from odysseus_kernels.models import ModelShape
    from odysseus_kernels.playground.runner import RunConfig, check_config

    assert issubclass(LlamaConfig, ModelShape) and issubclass(ModelConfig, ModelShape)
    for cls in (ModelShape, LlamaConfig, ModelConfig):
        with pytest.raises(ValueError, match=match):
            cls(**kw)
    if "linear_layers" not in kw:
        with pytest.raises(ValueError, match=match):  # the playground's flags go through the same rules
            check_config(RunConfig(**{("vocab" if k == "vocab_size" else k): v for k, v in kw.items()}), 1)
    cfg = LlamaConfig(hidden=48, heads=6, kv_heads=2)
    assert (cfg.head_dim, cfg.q_dim, cfg.kv_dim) == (8, 48, 16)
    assert ModelConfig.from_llama_config(cfg).to_dict()["vocab_size"] == cfg.vocab_size
