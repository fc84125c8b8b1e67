"""Device tensors built once per key and reused across calls (span-position tables, row permutations):
:class:`DeviceCache`, a bounded cache that keeps for good whatever a CUDA graph capture looked up, since a
replay reads those tensors long after the capture, when the cache may have dropped them (eager calls
with many other packings) and their memory been handed out again."""
from __future__ import annotations

import functools

import torch


def capturing(device) -> bool:
    """Whether the current CUDA stream is being captured into a graph (``device``: a str or a
    ``torch.device``; never asked for a host device)."""
    kind = device if isinstance(device, str) else device.type
    return kind.startswith("cuda") and torch.cuda.is_current_stream_capturing()


class DeviceCache:
    """``cache(*key)`` is ``build(*key)``, built once (at most ``maxsize`` entries kept, the least recently
    used dropped); the key's last element is the device (a str or a ``torch.device``). Entries looked up while the
    current stream is being captured into a CUDA graph are also kept in :attr:`captured`, for the life
    of the process."""

    def __init__(self, build, maxsize: int):
        self._cached = functools.lru_cache(maxsize=maxsize)(build)
        self.captured: dict = {}

    def __call__(self, *key):
        value = self._cached(*key)
        if capturing(key[-1]):
            self.captured[key] = value
        return value

    def cache_clear(self) -> None:
        """Drop the bounded cache (what a capture used stays in :attr:`captured`)."""
        self._cached.cache_clear()
