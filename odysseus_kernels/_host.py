"""Host-side copies of small tensors that ops must know on the host (``cu_seqlens``, LASP-2's
``g_gamma``), read once per tensor version.

Reading a CUDA tensor on the host synchronises the host with the GPU. :func:`host_values` reads a
tensor once and returns the cached values while the same tensor object is passed again unmodified
(same object, same version counter: any in-place write through torch bumps the version and the next
call reads again). Pass a list or tuple where you can: that never reads anything. Writes that bypass
the version counter (``tensor.data``, raw pointers, NCCL receiving into it) are not seen: give such
buffers as lists.
"""
from __future__ import annotations

import weakref

import torch

_cache: dict[int, tuple] = {}


def _forget(key: int):
    return lambda _ref: _cache.pop(key, None)


def host_values(t: torch.Tensor) -> tuple:
    """``tuple(t.tolist())`` for a 1-D tensor, read once per (tensor object, version)."""
    key = id(t)
    try:
        version = t._version
    except RuntimeError:  # inference tensors have no version counter: read every time
        return tuple(t.detach().tolist())
    hit = _cache.get(key)
    if hit is not None:
        ref, ver, ptr, vals = hit
        if ref() is t and ver == version and ptr == t.data_ptr():
            return vals
    vals = tuple(t.detach().tolist())  # on CUDA: one device-to-host read (a synchronisation)
    _cache[key] = (weakref.ref(t, _forget(key)), version, t.data_ptr(), vals)
    return vals
