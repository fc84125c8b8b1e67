"""Block attention with log-sum-exp: the local compute of every softmax-attention strategy.

``attention_block_fwd`` / ``attention_block_bwd`` / ``merge_attention`` dispatch on ``backend``
(``"auto"``, ``"torch"``, ...); ``reference.py`` holds the pure-PyTorch oracle.
"""
from .api import attention_block_bwd, attention_block_fwd, merge_attention
from .reference import attention_ref, block_mask

__all__ = ["attention_block_bwd", "attention_block_fwd", "attention_ref", "block_mask", "merge_attention"]
