"""The package's P2P tags (defined in :mod:`odysseus_kernels.comm.tags`, a leaf module, so that
``comm`` can use them without importing ``ops``)."""
from ...comm.tags import ALL, RELAY, RING_BACKWARD, RING_FORWARD, ROTATION, TOKEN_RING_BACK, TOKEN_RING_OUT

__all__ = ["ALL", "RELAY", "RING_BACKWARD", "RING_FORWARD", "ROTATION", "TOKEN_RING_BACK", "TOKEN_RING_OUT"]
