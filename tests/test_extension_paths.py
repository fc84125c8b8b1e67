"""Ring attention and LASP-2 with and without the compiled extension: both paths match the float64
reference, and the extension path really calls the extension's ops."""
import pytest
import torch

import odysseus_kernels as ok
from odysseus_kernels.extension import extension_disabled
from odysseus_kernels.kernels.attention import attention_ref
from odysseus_kernels.kernels.linear_attention import linear_attention_ref
from tests.distributed import run_world

pytestmark = pytest.mark.skipif(not ok.extension_available(), reason="compiled extension not built")


def _both_paths():
    from odysseus_kernels.kernels import extension_ops

    calls = {"merge": 0, "scan": 0}
    merge, scan = extension_ops.merge_attention_states_, extension_ops.linear_attention_state_scan

    def counting_merge(*a):
        calls["merge"] += 1
        return merge(*a)

    def counting_scan(*a):
        calls["scan"] += 1
        return scan(*a)

    extension_ops.merge_attention_states_, extension_ops.linear_attention_state_scan = counting_merge, counting_scan
    try:
        n = ok.group_info().size
        g = torch.Generator().manual_seed(5)
        q, k, v, do = (torch.randn(2, 4 * n, 4, 8, generator=g, dtype=torch.float64) for _ in range(4))
        decay = torch.tensor([-0.1, -0.3, -0.02, 0.0], dtype=torch.float64)
        refs = {}
        for name, f in (("ring", lambda a, b, c: attention_ref(a, b, c, causal=True)),
                        ("lasp2", lambda a, b, c: linear_attention_ref(a, b, c, g_gamma=decay))):
            leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
            f(*leaves).backward(do)
            refs[name] = [t.grad for t in leaves]
            refs[name].insert(0, f(q, k, v))
        out = {}
        for disabled in (False, True):
            before = dict(calls)
            for name, fn in (("ring", lambda a, b, c: ok.ring_attention(a, b, c, causal=True, layout="zigzag")),
                             ("lasp2", lambda a, b, c: ok.lasp2_linear_attention(a, b, c, g_gamma=decay, scale=1.0))):
                layout = "zigzag" if name == "ring" else "contiguous"
                ls = [ok.shard_sequence(t, layout=layout).clone().requires_grad_(True) for t in (q, k, v)]
                with extension_disabled() if disabled else torch.enable_grad():
                    o = fn(*ls)
                    o.backward(ok.shard_sequence(do, layout=layout))
                got = [o] + [t.grad for t in ls]
                err = max((a - ok.shard_sequence(b, layout=layout)).abs().max().item() for a, b in zip(got, refs[name]))
                out[(name, disabled)] = err
            out[("calls", disabled)] = (calls["merge"] - before["merge"], calls["scan"] - before["scan"])
        return out
    finally:  # the spies never outlive this task
        extension_ops.merge_attention_states_, extension_ops.linear_attention_state_scan = merge, scan


@pytest.mark.parametrize("n", [2, 3])
def test_ring_and_lasp2_match_with_and_without_the_extension(n):
    for res in run_world(_both_paths, n, timeout=300):
        assert all(v < 1e-12 for k, v in res.items() if k[0] != "calls"), res
        merges, scans = res[("calls", False)]
        assert merges > 0 and scans > 0  # the extension path ran the extension's ops
        assert res[("calls", True)] == (0, 0)  # and the other path did not
