"""Every point-to-point tag of the package, named once (re-exported by :mod:`odysseus_kernels.ops.ring`).

Gloo matches a send to a receive by (peer, tag); NCCL by peer and posting order. Transfers that are
in flight at the same time between the same two ranks therefore carry distinct tags; transfers of
ops that run one after the other may share one (every op waits for all it posted before returning).
A leaf module: :mod:`.p2p` and the ops both import it, it imports nothing.
"""

# comm.ring_exchange: its two directions, posted in one batch.
RING_FORWARD = 11   # to the next rank
RING_BACKWARD = 12  # to the previous rank

# ops.ring: the payload of a Rotation and the accumulator of a Relay, posted in one batch (the
# prefetch of step t+1 beside the returns of step t-1). Ring attention (K/V, dK/dV), RSA (K, V, K/V),
# the TP ring (shard, partial products) and the fused AG-GEMM's feeding ring use them.
ROTATION = 20
RELAY = 22

# TokenRing: rows to the key owner (queries; backward: queries with dO, then lse with delta) and
# partial results back to the query owner, posted together in one batch of a step.
TOKEN_RING_OUT = (31, 32)
TOKEN_RING_BACK = (33, 34)

ALL = (RING_FORWARD, RING_BACKWARD, ROTATION, RELAY) + TOKEN_RING_OUT + TOKEN_RING_BACK
