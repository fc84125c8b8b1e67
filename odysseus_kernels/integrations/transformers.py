"""Hugging Face transformers integration (optional extra ``[hf]``).

Importing this module registers our sequence-parallel attention with transformers' public
``AttentionInterface`` (and a matching ``AttentionMaskInterface`` entry that builds no mask: the
ops apply causality, windows and documents themselves), under the names

``odysseus_ring``, ``odysseus_zigzag``, ``odysseus_token_ring``, ``odysseus_ulysses``,
``odysseus_usp``, ``odysseus_allgather_kv``.

Usage (every rank runs the same model on its shard of the sequence)::

    import odysseus_kernels.integrations.transformers as okhf
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="odysseus_ring")
    logits = model(**okhf.shard_inputs(input_ids, attn_implementation="odysseus_ring")).logits

``shard_inputs`` shards ``input_ids`` (and ``labels``, pre-shifted) for the layout the
implementation uses and passes the global ``position_ids`` so RoPE sees the right positions;
with ``cu_seqlens=`` (a packed stream) it shards per document and restarts positions per document.
The group defaults to the default process group; ``configure(model, group=..., layout=...)``
(or, for USP, ``ulysses_group=`` / ``ring_group=``) sets it per model. Gradients of the
(replicated) weights must be summed over the group after backward, e.g.
``ok.layers.sync_replicated_grads(model.parameters(), group)``. Attention-mask padding is not
supported (pack the sequences instead).
"""
from __future__ import annotations

import torch

from ..ops.attention import (
    allgather_kv_attention,
    ring_attention,
    token_ring_attention,
    ulysses_attention,
    usp_attention,
)
from ..ops.layout import shard_packed, shard_sequence

try:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("odysseus_kernels.integrations.transformers needs transformers: "
                      "pip install 'odysseus-kernels[hf]'") from e

# name -> (op, default layout)
IMPLEMENTATIONS = {
    "odysseus_ring": (ring_attention, "contiguous"),
    "odysseus_zigzag": (ring_attention, "zigzag"),
    "odysseus_token_ring": (token_ring_attention, "zigzag"),
    "odysseus_ulysses": (ulysses_attention, "contiguous"),
    "odysseus_usp": (usp_attention, "zigzag"),
    "odysseus_allgather_kv": (allgather_kv_attention, "contiguous"),
}

_CONFIG_ATTR = "_odysseus_sp"


def configure(model, *, group=None, layout=None, ulysses_group=None, ring_group=None, backend="auto"):
    """Set the sequence-parallel group / layout the model's attention uses (stored on the model's
    config, so every attention module sees it). Returns the model."""
    setattr(model.config, _CONFIG_ATTR, {"group": group, "layout": layout, "ulysses_group": ulysses_group,
                                         "ring_group": ring_group, "backend": backend})
    return model


def _settings(module, name):
    cfg = getattr(getattr(module, "config", None), _CONFIG_ATTR, None) or {}
    op, default_layout = IMPLEMENTATIONS[name]
    return op, cfg.get("layout") or default_layout, cfg


def _make_attention(name):
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if dropout:
            raise ValueError(f"{name}: attention dropout is not supported (set attention_dropout=0)")
        if attention_mask is not None:
            raise ValueError(f"{name}: attention masks (padding) are not supported; pack the sequences and pass "
                             "cu_seqlens to shard_inputs instead")
        op, layout, cfg = _settings(module, name)
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # HF [B, H, S, D] -> ours [B, S, H, D]
        kw = dict(causal=getattr(module, "is_causal", True), softmax_scale=scaling, layout=layout,
                  backend=cfg.get("backend", "auto"))
        window = getattr(module, "sliding_window", None)
        if window:
            kw["window_size"] = (int(window) - 1, 0 if kw["causal"] else int(window) - 1)
        if kwargs.get("odysseus_cu_seqlens") is not None:  # a packed stream, sharded per document
            kw["cu_seqlens"] = kwargs["odysseus_cu_seqlens"]
            kw["layout"] = layout if layout.startswith("doc_") else "doc_" + layout
        if op is usp_attention:
            if cfg.get("ulysses_group") is None or cfg.get("ring_group") is None:
                raise ValueError(f"{name}: call configure(model, ulysses_group=..., ring_group=...) first "
                                 "(ok.usp_groups builds them)")
            out = op(q, k, v, ulysses_group=cfg["ulysses_group"], ring_group=cfg["ring_group"], **kw)
        else:
            out = op(q, k, v, group=cfg.get("group"), **kw)
        return out, None  # [B, S, H, D], as transformers expects from attention functions

    attention.__name__ = f"{name}_attention"
    return attention


def _no_mask(*args, **kwargs):
    return None


for _name in IMPLEMENTATIONS:
    AttentionInterface.register(_name, _make_attention(_name))
    AttentionMaskInterface.register(_name, _no_mask)


def shard_inputs(input_ids: torch.Tensor, *, attn_implementation: str = "odysseus_ring", cu_seqlens=None,
                 group=None, layout=None) -> dict:
    """This rank's model inputs for a full ``input_ids [B, L]`` (identical on every rank).

    Returns a dict with ``input_ids`` and ``position_ids`` (global positions of the local tokens;
    with ``cu_seqlens``, positions inside each document) for the implementation's layout, and
    ``odysseus_cu_seqlens`` for packed streams. Pass the dict to ``model(**...)``. Shard labels the
    same way with :func:`~odysseus_kernels.shard_sequence` / :func:`~odysseus_kernels.shard_packed`
    (already shifted: label i is the target of token i; transformers' own loss shifts inside the
    shard, which is wrong at shard boundaries).
    """
    _, default_layout = IMPLEMENTATIONS[attn_implementation]
    layout = layout or default_layout
    out = {}
    if cu_seqlens is not None:
        if not layout.startswith("doc_"):
            layout = "doc_" + layout
        ids, meta = shard_packed(input_ids, cu_seqlens, group=group, layout=layout)
        out.update(input_ids=ids, position_ids=meta.position_ids.expand(ids.shape[0], -1),
                   odysseus_cu_seqlens=meta.cu_seqlens)
    else:
        ids = shard_sequence(input_ids, group=group, layout=layout)
        pos = shard_sequence(torch.arange(input_ids.shape[1], device=input_ids.device).view(1, -1), group=group,
                             layout=layout)
        out.update(input_ids=ids, position_ids=pos.expand(ids.shape[0], -1))
    return out
