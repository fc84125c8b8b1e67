"""Models the strategies are applied to."""
from .llama import LlamaConfig, LlamaModel, make_batch, rope, token_loss_sum

__all__ = ["LlamaConfig", "LlamaModel", "make_batch", "rope", "token_loss_sum"]
