"""Models the strategies are applied to."""
from .llama import LlamaConfig, LlamaModel, make_batch, rope, token_loss_sum
from .shape import ModelShape

__all__ = ["LlamaConfig", "LlamaModel", "ModelShape", "make_batch", "rope", "token_loss_sum"]
