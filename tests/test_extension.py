"""The compiled extension (csrc/, torch.ops.odysseus_kernels): every op against a float64 reference
on fresh random inputs with -inf rows, odd sizes and non-contiguous inputs, gradients, bad inputs,
torch.library.opcheck on CPU (and CUDA when there is a GPU), once under torch.compile(fullgraph=True),
the package without the extension (a fresh interpreter with ``_C`` hidden), and the CUDA gates with
an extension built without CUDA kernels (faked)."""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import odysseus_kernels as ok
from odysseus_kernels.kernels import extension_ops as eo
from odysseus_kernels.kernels.attention.reference import merge_attention_torch
from odysseus_kernels.kernels.linear_attention.scan import state_scan
from tests.cuda_wait import wait_done

NS = "odysseus_kernels"
OPS = ("merge_attention_states_", "linear_attention_state_scan", "stream_write_value32_", "stream_wait_value32")
# (atol, rtol) of the kernels' accumulation dtype against the float64 reference
TOL = {torch.float32: (2e-6, 2e-5), torch.float64: (1e-13, 1e-12)}
INF = float("inf")

ops = getattr(torch.ops, NS)


@pytest.fixture(autouse=True)
def _needs_extension(request):
    """Every test but test_package_works_without_extension needs the extension (dev.sh builds it)."""
    if os.environ.get("ODYSSEUS_KERNELS_BUILD_EXT") == "0" and "without_extension" not in request.node.name:
        pytest.skip("extension build disabled (ODYSSEUS_KERNELS_BUILD_EXT=0)")


def test_extension_is_built():
    """The editable install built it (CI must not silently fall back), with CUDA kernels when it could."""
    assert ok.extension_available()
    for name in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"{NS}::{name}", "CPU"), name
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = (CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))) or shutil.which("nvcc")
    if torch.version.cuda is not None and nvcc:
        for name in OPS:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"{NS}::{name}", "CUDA"), name


def _cuobjdump() -> str:
    """The local CUDA toolkit's cuobjdump, else the one Triton bundles (always there)."""
    from torch.utils.cpp_extension import CUDA_HOME

    for cand in ([os.path.join(CUDA_HOME, "bin", "cuobjdump")] if CUDA_HOME else []) + [shutil.which("cuobjdump")]:
        if cand and os.path.exists(cand):
            return cand
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def test_extension_embeds_sm80_sm90_sass_and_compute90_ptx():
    """setup.py's default TORCH_CUDA_ARCH_LIST "8.0;9.0+PTX": SASS for A100 and H100/H200, and compute_90
    PTX that a newer GPU can JIT-compile (without it such a GPU has nothing to run)."""
    if not ok.extension_available():
        pytest.skip("the compiled extension is not built")
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"{NS}::{OPS[0]}", "CUDA"):
        pytest.skip("the extension was built without CUDA (no nvcc): no device code to inspect")
    from odysseus_kernels import _C

    tool = _cuobjdump()
    ptx = subprocess.run([tool, "--list-ptx", _C.__file__], capture_output=True, text=True, timeout=120)
    elf = subprocess.run([tool, "--list-elf", _C.__file__], capture_output=True, text=True, timeout=120)
    assert ptx.returncode == 0 and elf.returncode == 0, ptx.stderr + elf.stderr
    # cuobjdump names embedded PTX by its virtual arch: "<lib>.<n>.sm_90.ptx" is compute_90 PTX
    assert re.search(r"\b(sm|compute)_90\.ptx\b", ptx.stdout), f"no compute_90 PTX in {_C.__file__}:\n{ptx.stdout}"
    for sm in ("sm_80", "sm_90"):
        assert sm in elf.stdout, f"no {sm} SASS in {_C.__file__}:\n{elf.stdout}"


# --------------------------------------------------------------------------- merge_attention_states_

def _merge_inputs(seed, b, s, h, d, acc, block_dtype, device="cpu", strided=False):
    """Running (out, lse) and a block (block_out, block_lse) with rows at -inf on one side, the other
    and both. Rows whose lse is -inf have out = 0, as a block forward produces them."""
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(b, s, h, d, generator=g, dtype=torch.float64)
    bout = torch.randn(b, s, h, d, generator=g, dtype=torch.float64)
    lse = torch.randn(b, h, s, generator=g, dtype=torch.float64) * 3
    blse = torch.randn(b, h, s, generator=g, dtype=torch.float64) * 3
    which = torch.randint(0, 4, (b, h, s), generator=g)  # 0: both finite, 1: old -inf, 2: block -inf, 3: both
    lse[(which == 1) | (which == 3)] = -INF
    blse[(which == 2) | (which == 3)] = -INF
    out *= torch.isfinite(lse).transpose(1, 2).unsqueeze(-1)
    bout *= torch.isfinite(blse).transpose(1, 2).unsqueeze(-1)
    bout = bout.to(block_dtype).to(torch.float64)  # what the kernel will read, exactly

    def place(t, dtype):
        t = t.to(device, dtype)
        # strided: the same values behind transposed storage ([B, H, S, D] memory seen as [B, S, H, D])
        return t.transpose(1, 2).contiguous().transpose(1, 2) if strided else t

    ref = (out.clone(), lse.clone())
    merge_attention_torch(ref[0], ref[1], bout, blse)
    args = (place(out, acc), place(lse, acc), place(bout, block_dtype), place(blse, acc))
    return args, ref, which


MERGE_CASES = [
    pytest.param(1, 63, 4, 24, torch.float32, torch.float32, False, id="B1-S63-H4-D24-fp32"),
    pytest.param(2, 17, 3, 128, torch.float32, torch.float16, False, id="B2-S17-H3-D128-fp32<fp16"),
    pytest.param(2, 9, 5, 33, torch.float32, torch.bfloat16, True, id="B2-S9-H5-D33-fp32<bf16-strided"),
    pytest.param(1, 1, 1, 1, torch.float32, torch.float32, False, id="B1-S1-H1-D1"),
    pytest.param(3, 7, 2, 40, torch.float64, torch.float64, True, id="B3-S7-H2-D40-fp64-strided"),
    pytest.param(1, 5, 2, 0, torch.float32, torch.float32, False, id="D0"),
]


@pytest.mark.parametrize("b,s,h,d,acc,block_dtype,strided", MERGE_CASES)
def test_merge_matches_reference(b, s, h, d, acc, block_dtype, strided):
    args, (ref_out, ref_lse), which = _merge_inputs(10 + d, b, s, h, d, acc, block_dtype, strided=strided)
    out, lse, bout, _ = args
    out0, lse0 = out.clone(), lse.clone()
    eo.merge_attention_states_(*args)
    atol, rtol = TOL[acc]
    torch.testing.assert_close(out.double(), ref_out, atol=atol, rtol=rtol)
    torch.testing.assert_close(lse.double(), ref_lse, atol=atol, rtol=rtol)
    assert not out.isnan().any() and not lse.isnan().any()
    # -inf rows are exact: only the other side survives, untouched; both -inf stays -inf
    rows = lambda m: m.transpose(1, 2)  # noqa: E731  [B, H, S] mask -> [B, S, H] rows
    assert torch.equal(out[rows(which == 1)], bout[rows(which == 1)].to(acc))
    assert torch.equal(lse[which == 1], args[3][which == 1])
    assert torch.equal(out[rows(which >= 2)], out0[rows(which >= 2)])
    assert torch.equal(lse[which >= 2], lse0[which >= 2])
    assert (lse[which == 3] == -INF).all()


def test_merge_ignores_values_behind_neg_inf():
    """A side with lse = -inf is not read: NaN garbage there (e.g. an uninitialised block) never leaks."""
    (out, lse, bout, blse), (ref_out, ref_lse), which = _merge_inputs(3, 2, 31, 3, 24, torch.float32, torch.float32)
    rows = lambda m: m.transpose(1, 2)  # noqa: E731
    out[rows((which == 1) | (which == 3))] = float("nan")
    bout[rows(which >= 2)] = float("nan")
    eo.merge_attention_states_(out, lse, bout, blse)
    both = rows(which == 3)
    assert out[both].isnan().all()  # both -inf: the row is left exactly as it was
    torch.testing.assert_close(out[~both].double(), ref_out[~both], atol=2e-6, rtol=2e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=2e-6, rtol=2e-5)


def test_merge_sequence_equals_softmax_over_all_blocks():
    """Merging block results one by one (as a ring does) gives the softmax over all keys."""
    g = torch.Generator().manual_seed(5)
    b, s, h, d, n_blocks, k = 1, 13, 2, 24, 4, 9
    scores = torch.randn(b, h, s, n_blocks * k, generator=g, dtype=torch.float64)
    scores[..., 0, :2 * k] = -INF  # a row that sees no key in the first two blocks
    v = torch.randn(b, h, n_blocks * k, d, generator=g, dtype=torch.float64)
    out, lse = torch.zeros(b, s, h, d), torch.full((b, h, s), -INF)
    for i in range(n_blocks):
        sc = scores[..., i * k:(i + 1) * k]
        blse = torch.logsumexp(sc, -1)
        p = torch.exp(sc - torch.where(torch.isinf(blse), 0, blse).unsqueeze(-1))
        bout = torch.einsum("bhsk,bhkd->bshd", p, v[:, :, i * k:(i + 1) * k])
        eo.merge_attention_states_(out, lse, bout.float(), blse.float())
    full = torch.einsum("bhsk,bhkd->bshd", torch.softmax(scores, -1), v)
    torch.testing.assert_close(out.double(), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), torch.logsumexp(scores, -1), atol=1e-5, rtol=1e-5)


def test_merge_bad_inputs():
    out, lse = torch.zeros(2, 5, 3, 4), torch.zeros(2, 3, 5)
    with pytest.raises(ValueError, match=r"lse must be \[batch, heads, seq\] = \[2, 3, 5\]"):
        eo.merge_attention_states_(out, torch.zeros(2, 5, 3), out.clone(), lse.clone())
    with pytest.raises(ValueError, match="block_out must have out's shape"):
        eo.merge_attention_states_(out, lse, torch.zeros(2, 5, 3, 5), lse.clone())
    with pytest.raises(TypeError, match="out must be float32"):
        eo.merge_attention_states_(out.half(), lse, out.half(), lse.clone())
    with pytest.raises(TypeError, match="block_lse must have out's dtype"):
        eo.merge_attention_states_(out, lse, out.clone(), lse.double())
    with pytest.raises(ValueError, match="out must not have overlapping elements"):
        eo.merge_attention_states_(torch.zeros(2, 5, 3, 1).expand(2, 5, 3, 4), lse, out.clone(), lse.clone())


# --------------------------------------------------------------------------- linear_attention_state_scan

def _scan_ref(states, log_decay, reverse):
    """The definition, term by term in float64: out[t] = sum_{j<t} a^(t-1-j) M_j (j>t, a^(j-1-t) if reverse)."""
    w = states.shape[0]
    a = torch.exp(log_decay.double()).view(1, -1, 1, 1)  # [1, H, 1, 1] against [B, H, dk, dv]
    out = torch.zeros_like(states, dtype=torch.float64)
    for t in range(w):
        for j in (range(t + 1, w) if reverse else range(t)):
            n = (j - 1 - t) if reverse else (t - 1 - j)
            out[t] += a ** n * states[j].double()
    return out


def _log_decay(kind, h, g):
    if kind == "zero":
        return torch.zeros(h)
    ld = -torch.rand(h, generator=g) * 2
    if kind == "with-inf":
        ld[0] = -INF  # a = 0: each rank sees only its neighbour's state
    return ld


SCAN_CASES = [pytest.param(*c, id=f"W{c[0]}-B{c[1]}-H{c[2]}-K{c[3]}-V{c[4]}-{c[5]}-{str(c[6])[6:]}")
              for c in [(1, 1, 1, 1, 1, "decay", torch.float32), (4, 2, 3, 5, 6, "zero", torch.float32),
                        (7, 1, 4, 24, 17, "decay", torch.float32), (5, 2, 3, 8, 8, "with-inf", torch.float32),
                        (3, 1, 2, 7, 9, "decay", torch.float64)]]


@pytest.mark.parametrize("reverse", [False, True], ids=["prefix", "suffix"])
@pytest.mark.parametrize("w,b,h,dk,dv,decay,dtype", SCAN_CASES)
def test_state_scan_matches_reference(w, b, h, dk, dv, decay, dtype, reverse):
    g = torch.Generator().manual_seed(w * 100 + dk)
    states = torch.randn(w, b, h, dk, dv, generator=g, dtype=dtype)
    log_decay = _log_decay(decay, h, g)
    out = eo.linear_attention_state_scan(states, log_decay, reverse)
    assert out.shape == states.shape and out.dtype == dtype and out.is_contiguous()
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.double(), _scan_ref(states, log_decay, reverse), atol=atol * w, rtol=rtol)
    assert torch.equal(out[-1 if reverse else 0], torch.zeros_like(out[0]))


def test_state_scan_non_contiguous_input():
    g = torch.Generator().manual_seed(1)
    states = torch.randn(5, 3, 2, 6, 7, generator=g).transpose(3, 4)  # [W, B, H, dk=7, dv=6], strided
    log_decay = -torch.rand(2, generator=g, dtype=torch.float64)  # another float dtype is accepted
    out = eo.linear_attention_state_scan(states, log_decay, False)
    torch.testing.assert_close(out.double(), _scan_ref(states, log_decay.float(), False), atol=1e-5, rtol=2e-5)


@pytest.mark.parametrize("reverse", [False, True], ids=["prefix", "suffix"])
def test_state_scan_gradients(reverse):
    """Both inputs' gradients: gradcheck in float64, and float32 against autograd of the reference."""
    g = torch.Generator().manual_seed(7 + reverse)
    states = torch.randn(4, 1, 2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    log_decay = (-torch.rand(2, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda s, ld: eo.linear_attention_state_scan(s, ld, reverse), (states, log_decay))

    s32 = torch.randn(6, 2, 3, 9, 7, generator=g, requires_grad=True)
    ld32 = (-torch.rand(3, generator=g)).requires_grad_()
    grad = torch.randn(6, 2, 3, 9, 7, generator=g)
    eo.linear_attention_state_scan(s32, ld32, reverse).backward(grad)
    s64, ld64 = s32.detach().double().requires_grad_(), ld32.detach().double().requires_grad_()
    _scan_ref(s64, ld64, reverse).backward(grad.double())
    torch.testing.assert_close(s32.grad.double(), s64.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ld32.grad.double(), ld64.grad, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("reverse", [False, True], ids=["prefix", "suffix"])
def test_state_scan_matches_python_state_scan(reverse):
    """Same values and gradients as LASP-2's Python path (kernels.linear_attention.scan.state_scan)."""
    g = torch.Generator().manual_seed(11 + reverse)
    states = torch.randn(5, 2, 3, 24, 17, generator=g, requires_grad=True)
    log_decay = (-torch.rand(3, generator=g)).requires_grad_()
    grad = torch.randn(5, 2, 3, 24, 17, generator=g)
    out = eo.linear_attention_state_scan(states, log_decay, reverse)
    ds, dld = torch.autograd.grad(out, (states, log_decay), grad)
    out_py = state_scan(states, log_decay, reverse)
    ds_py, dld_py = torch.autograd.grad(out_py, (states, log_decay), grad)
    torch.testing.assert_close(out, out_py, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ds, ds_py, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dld, dld_py, atol=1e-3, rtol=1e-4)


def test_state_scan_bad_inputs():
    states = torch.zeros(3, 1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"log_decay must be \[heads\] = \[2\]"):
        eo.linear_attention_state_scan(states, torch.zeros(3), False)
    with pytest.raises(ValueError, match=r"states must be \[world, batch, heads, d_k, d_v\]"):
        eo.linear_attention_state_scan(states[0], torch.zeros(2), False)
    with pytest.raises(TypeError, match="states must be float32"):
        eo.linear_attention_state_scan(states.half(), torch.zeros(2), False)
    with pytest.raises(TypeError, match="log_decay must be floating point"):
        eo.linear_attention_state_scan(states, torch.zeros(2, dtype=torch.int64), False)


# --------------------------------------------------------------------------- stream-ordered flags (CPU)

def test_flags_cpu_program_order():
    flags = torch.zeros(3, dtype=torch.int32)
    eo.signal(flags[1], 7)
    assert flags.tolist() == [0, 7, 0]
    eo.wait(flags[1], 7)
    eo.wait(flags[1], 5)  # >=
    eo.wait(flags[1], 7, equal=True)
    with pytest.raises(RuntimeError, match="would never return"):
        eo.wait(flags[1], 8)
    with pytest.raises(RuntimeError, match="would never return"):
        eo.wait(flags[1], 5, equal=True)
    # >= is in wrap-around order, like cuStreamWaitValue32: INT32_MIN + 1 comes 2 after INT32_MAX
    eo.signal(flags[0], -2**31 + 1)
    eo.wait(flags[0], 2**31 - 1)
    with pytest.raises(RuntimeError, match="would never return"):
        eo.wait(flags[0], -2**31 + 2)


def test_flags_bad_inputs():
    with pytest.raises(TypeError, match="flag must be int32"):
        eo.signal(torch.zeros(1, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="flag must have exactly one element"):
        eo.wait(torch.zeros(2, dtype=torch.int32), 0)
    with pytest.raises(ValueError, match="value must fit in int32"):
        eo.signal(torch.zeros(1, dtype=torch.int32), 2**31)


@pytest.mark.parametrize("backend", ["auto", "memop", "event"])
def test_chunk_signals_cpu(backend):
    sig = eo.ChunkSignals(3, "cpu", backend=backend)
    for _ in range(2):
        r = sig.next_round()
        sig.arrived(2)
        sig.wait(2)
        with pytest.raises(RuntimeError, match=r"wait\(0\) before arrived\(0\)|would never return"):
            sig.wait(0)  # chunk 0 has not arrived in this round (flags of the last round don't count)
        sig.arrived(0)
        sig.wait(0)
    assert r == 2
    with pytest.raises(ValueError, match="backend must be"):
        eo.ChunkSignals(2, backend="nccl")
    with pytest.raises(RuntimeError, match=r"call next_round\(\) before"):
        eo.ChunkSignals(2, backend=backend).wait(0)
    with pytest.raises(IndexError, match=r"chunk must be in \[0, 3\), got 3"):
        sig.arrived(3)


# --------------------------------------------------------------------------- opcheck + torch.compile

def _opcheck_cases(device):
    (m_args, _, _) = _merge_inputs(0, 2, 9, 3, 24, torch.float32, torch.float32, device=device)
    (m16_args, _, _) = _merge_inputs(1, 1, 7, 2, 16, torch.float32, torch.bfloat16, device=device, strided=True)
    g = torch.Generator().manual_seed(2)
    states = torch.randn(5, 2, 3, 4, 6, generator=g).to(device).requires_grad_()
    log_decay = (-torch.rand(3, generator=g)).to(device).requires_grad_()
    flag = torch.full((1,), 3, dtype=torch.int32, device=device)
    return [("merge_attention_states_", m_args), ("merge_attention_states_", m16_args),
            ("linear_attention_state_scan", (states, log_decay, False)),
            ("linear_attention_state_scan", (states, log_decay.detach(), True)),
            ("stream_write_value32_", (flag, 4)), ("stream_wait_value32", (flag, 3)),
            ("stream_wait_value32", (flag, 3, True))]


def test_opcheck_cpu():
    for name, args in _opcheck_cases("cpu"):
        torch.library.opcheck(getattr(ops, name).default, args)


def test_torch_compile_fullgraph():
    """All four ops in one inductor-compiled graph, with the scan's backward (~15 s on CPU with a cold cache): the ops'
    fake kernels, functionalised in-place merge, autograd, and the flag ops' effects."""
    def step(out, lse, bout, blse, states, log_decay, flag):
        eo.merge_attention_states_(out, lse, bout, blse)
        eo.signal(flag, 1)
        eo.wait(flag, 1)
        return eo.linear_attention_state_scan(states, log_decay, False).square().sum()

    (m_args, (ref_out, ref_lse), _) = _merge_inputs(4, 1, 11, 2, 24, torch.float32, torch.float16)
    g = torch.Generator().manual_seed(4)
    states = torch.randn(3, 1, 2, 5, 4, generator=g, requires_grad=True)
    log_decay = -torch.rand(2, generator=g)
    flag = torch.zeros(1, dtype=torch.int32)
    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    loss = compiled(*m_args, states, log_decay, flag)
    loss.backward()
    torch.testing.assert_close(m_args[0].double(), ref_out, atol=2e-6, rtol=2e-5)
    torch.testing.assert_close(m_args[1].double(), ref_lse, atol=2e-6, rtol=2e-5)
    assert flag.item() == 1
    s64 = states.detach().double().requires_grad_()
    ref_loss = _scan_ref(s64, log_decay, False).square().sum()
    ref_loss.backward()
    torch.testing.assert_close(loss.double(), ref_loss, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(states.grad.double(), s64.grad, atol=1e-5, rtol=1e-5)
    # the wait must survive compilation (it returns nothing and mutates nothing)
    with pytest.raises(RuntimeError, match="would never return"):
        torch.compile(lambda f: eo.wait(f, 9), fullgraph=True, backend="inductor")(flag)


# --------------------------------------------------------------------------- without the extension

def test_package_works_without_extension():
    """A fresh interpreter where ``odysseus_kernels._C`` cannot be imported: the package imports,
    says so, and its Python paths run; the wrappers raise an actionable error."""
    code = """
import sys, warnings
sys.modules["odysseus_kernels._C"] = None  # makes `from . import _C` raise ImportError
import torch
import odysseus_kernels as ok
from odysseus_kernels.kernels.attention import merge_attention
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert ok.extension_available() is False
assert any("compiled extension not available" in str(w.message) for w in caught)
out, lse = torch.zeros(1, 3, 2, 4), torch.full((1, 2, 3), float("-inf"))
merge_attention(out, lse, torch.ones(1, 3, 2, 4), torch.zeros(1, 2, 3))
assert torch.equal(out, torch.ones(1, 3, 2, 4))
from odysseus_kernels.kernels import extension_ops as eo
try:
    eo.linear_attention_state_scan(torch.zeros(2, 1, 1, 1, 1), torch.zeros(1))
except RuntimeError as e:
    assert "pip install" in str(e)
else:
    raise AssertionError("no error without the extension")
sig = eo.ChunkSignals(2)  # falls back to program order on CPU
sig.next_round(); sig.arrived(1); sig.wait(1)
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


# --------------------------------------------------------------------------- a build without CUDA kernels

class _NoEvent:
    """Stands in for torch.cuda.Event where there is no GPU (ChunkSignals records one on CUDA)."""

    def record(self, stream=None):
        pass


def test_cuda_gates_need_the_cuda_kernels(monkeypatch):
    """setup.py builds CPU kernels only without nvcc: that extension is available, but its ops raise
    NotImplementedError on CUDA tensors. Every gate that routes CUDA tensors to the extension must ask
    extension_has_cuda(): the dispatcher made to say the CUDA kernels are missing (or there), fake CUDA
    tensors (no GPU needed) through each gate, the extension's ops replaced by spies."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from odysseus_kernels import _extension_loader as loader
    from odysseus_kernels.kernels.attention import merge_attention
    from odysseus_kernels.ops.tp_gemm import fused

    assert ok.extension_available()  # loaded, so that the ops below exist to be replaced
    real = torch._C._dispatch_has_kernel_for_dispatch_key
    calls = []
    monkeypatch.setattr(eo, "merge_attention_states_", lambda *a: calls.append("merge"))
    monkeypatch.setattr(eo, "linear_attention_state_scan", lambda *a: calls.append("scan") or torch.zeros_like(a[0]))
    monkeypatch.setattr(ops, "stream_write_value32_", lambda *a: calls.append("signal"))
    monkeypatch.setattr(torch.cuda, "Event", _NoEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    try:
        for has_cuda in (False, True):
            monkeypatch.setattr(torch._C, "_dispatch_has_kernel_for_dispatch_key",
                                lambda op, key, has=has_cuda: has if key == "CUDA" else real(op, key))
            loader._registered_cuda_kernels.cache_clear()
            assert loader.extension_has_cuda() is has_cuda
            calls.clear()
            with FakeTensorMode():
                out, lse = torch.zeros(1, 3, 2, 4, device="cuda"), torch.zeros(1, 2, 3, device="cuda")
                merge_attention(out, lse, torch.zeros_like(out), torch.zeros_like(lse))
                state_scan(torch.zeros(2, 1, 2, 3, 3, device="cuda"), None, False)
                fused._signal(torch.zeros(1, dtype=torch.int32, device="cuda"), 1)
                backend = eo.ChunkSignals(2, "cuda").backend
            assert calls == (["merge", "scan", "signal"] if has_cuda else []), has_cuda
            assert backend == ("memop" if has_cuda else "event"), has_cuda
    finally:
        loader._registered_cuda_kernels.cache_clear()  # the next call asks the real dispatcher again


# --------------------------------------------------------------------------- imports (no circle)

def _package_imports(module: str) -> set[str]:
    """Every ``odysseus_kernels`` module ``module``'s source imports (module level or in functions)."""
    import ast
    import importlib.util

    path = importlib.util.find_spec(module).origin
    base = module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            mod = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            found.update([mod] + [f"{mod}.{a.name}" for a in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("odysseus_kernels")}


def test_extension_loading_is_a_leaf():
    """The loader imports nothing of the package but ``_C`` and the leaf ``_util``; the wrappers never
    import the public face."""
    assert _package_imports("odysseus_kernels._extension_loader") <= {
        "odysseus_kernels", "odysseus_kernels._C", "odysseus_kernels._util", "odysseus_kernels._util.ScopedFlag"}
    assert "odysseus_kernels.extension" not in _package_imports("odysseus_kernels.kernels.extension_ops")


@pytest.mark.parametrize("order", ["extension,extension_ops,load", "extension_ops,extension,load",
                                   "extension_ops,load,extension", "loader,load,extension_ops"])
def test_extension_modules_import_in_any_order(order):
    """A fresh interpreter imports the switch, the wrappers and the loader in either order and loads
    the library before or after: the fake kernels are registered iff the library is loaded."""
    mods = {"extension": "odysseus_kernels.extension", "extension_ops": "odysseus_kernels.kernels.extension_ops",
            "loader": "odysseus_kernels._extension_loader"}
    lines = ["import importlib, warnings", "warnings.simplefilter('ignore')"]
    for step in order.split(","):
        if step == "load":
            lines.append("avail = importlib.import_module('odysseus_kernels._extension_loader').extension_available()")
        else:
            lines.append(f"importlib.import_module({mods[step]!r})")
    lines += ["eo = importlib.import_module('odysseus_kernels.kernels.extension_ops')",
              "assert eo._registered == avail == eo._library_loaded(), (eo._registered, avail)",
              "print('ok', avail)"]
    res = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-3000:]
    if os.environ.get("ODYSSEUS_KERNELS_BUILD_EXT") != "0":
        assert res.stdout.split() == ["ok", "True"]


# --------------------------------------------------------------------------- CUDA

@pytest.mark.cuda
def test_opcheck_cuda():
    for name, args in _opcheck_cases("cuda"):
        torch.library.opcheck(getattr(ops, name).default, args)


@pytest.mark.cuda
@pytest.mark.parametrize("b,s,h,d,acc,block_dtype,strided", MERGE_CASES)
def test_merge_cuda_matches_reference(b, s, h, d, acc, block_dtype, strided):
    args, (ref_out, ref_lse), which = _merge_inputs(20 + d, b, s, h, d, acc, block_dtype, "cuda", strided)
    eo.merge_attention_states_(*args)
    atol, rtol = TOL[acc]
    torch.testing.assert_close(args[0].double().cpu(), ref_out, atol=atol, rtol=rtol)
    torch.testing.assert_close(args[1].double().cpu(), ref_lse, atol=atol, rtol=rtol)
    assert (args[1][which.cuda() == 3] == -INF).all()


@pytest.mark.cuda
@pytest.mark.parametrize("reverse", [False, True], ids=["prefix", "suffix"])
@pytest.mark.parametrize("w,b,h,dk,dv,decay,dtype", SCAN_CASES)
def test_state_scan_cuda_matches_reference(w, b, h, dk, dv, decay, dtype, reverse):
    g = torch.Generator().manual_seed(w * 100 + dk)
    states = torch.randn(w, b, h, dk, dv, generator=g, dtype=dtype)
    log_decay = _log_decay(decay, h, g)
    out = eo.linear_attention_state_scan(states.cuda(), log_decay.cuda(), reverse)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.double().cpu(), _scan_ref(states, log_decay, reverse), atol=atol * w, rtol=rtol)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["memop", "event"])
def test_chunk_signals_cuda_order_streams(backend):
    """The consumer stream's copy waits for the producer's (delayed) fill: without the wait the copy
    would run first and read zeros."""
    producer, consumer = torch.cuda.Stream(), torch.cuda.Stream()
    sig = eo.ChunkSignals(2, "cuda", backend=backend)
    data = torch.zeros(2, 1 << 20, device="cuda")
    seen = torch.empty_like(data)
    torch.cuda.synchronize()
    for rnd in range(1, 3):
        sig.next_round()
        with torch.cuda.stream(producer):
            for i in range(2):
                torch.cuda._sleep(50_000_000)  # ~tens of ms: the consumer would otherwise win
                data[i].fill_(rnd * 10 + i)
                sig.arrived(i)
        with torch.cuda.stream(consumer):
            for i in range(2):
                sig.wait(i)
                seen[i].copy_(data[i])
        done = torch.cuda.Event()
        done.record(consumer)
        wait_done(done, what=f"the consumer's copies (round {rnd})")
        torch.cuda.synchronize()  # bounded now: the producer's last op, the flag store, is behind the consumer
        assert seen[:, 0].tolist() == [rnd * 10, rnd * 10 + 1] and seen.eq(seen[:, :1]).all()


@pytest.mark.cuda
def test_flags_cuda_wait_enqueued_before_signal():
    """Stream memory operations allow the wait to be enqueued before the signal (events do not), given
    the producer's kernels are loaded already (see eo.wait): they run once before the wait is queued."""
    producer, consumer = torch.cuda.Stream(), torch.cuda.Stream()
    flag = torch.zeros(1, dtype=torch.int32, device="cuda")
    data, seen = torch.zeros(1 << 20, device="cuda"), torch.zeros(1 << 20, device="cuda")
    with torch.cuda.stream(producer):
        torch.cuda._sleep(1)
        data.fill_(0.0)
    torch.cuda.synchronize()
    with torch.cuda.stream(consumer):
        eo.wait(flag, 1)
        seen.copy_(data)
    with torch.cuda.stream(producer):
        torch.cuda._sleep(50_000_000)
        data.fill_(3.0)
        eo.signal(flag, 1)
    done = torch.cuda.Event()
    done.record(consumer)
    wait_done(done, what="the copy behind the wait")
    torch.cuda.synchronize()  # bounded now: the producer's last op, the flag store, is behind the consumer
    assert seen.eq(3.0).all() and flag.item() == 1
