"""Fill uninitialised floating-point allocations with NaN inside tests, so that an output a kernel
forgot to write fails loudly instead of passing with whatever the allocator left there."""
import torch

_installed = False


def _wrap(fn):
    def filled(*args, **kwargs):
        t = fn(*args, **kwargs)
        if t.is_floating_point() or t.is_complex():
            # no_grad: the fill is not part of any graph, and torch.empty(..., requires_grad=True) makes a
            # leaf that autograd would refuse to fill in place (torch 2.11's checkpoint makes one)
            with torch.no_grad():
                t.fill_(float("nan"))
        return t

    filled.__wrapped__ = fn
    return filled


def install() -> None:
    """Patch torch.empty / empty_like / empty_strided / Tensor.new_empty (idempotent)."""
    global _installed
    if _installed:
        return
    torch.empty = _wrap(torch.empty)
    torch.empty_like = _wrap(torch.empty_like)
    torch.empty_strided = _wrap(torch.empty_strided)
    torch.Tensor.new_empty = _wrap(torch.Tensor.new_empty)
    _installed = True
