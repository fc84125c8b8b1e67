"""Hardware profiles as data: peak and achieved compute rates, memory, links and latencies.

Every number is a documented physical constant (a datasheet peak, or an "achieved" fraction taken
from public measurements of the kind of kernel named), never fitted to the validation data points.
Users override any field, from Python (:meth:`HardwareProfile.with_overrides`) or from a JSON file
(:func:`load_hardware`), and benchmark results can calibrate the achieved rates
(:mod:`.calibration`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace


@dataclass(frozen=True)
class Link:
    """One level of interconnect, as seen by one GPU.

    Args:
        name: e.g. ``"NVLink3/NVSwitch"``.
        p2p_gbps: achieved point-to-point bandwidth per direction (GB/s = 1e9 B/s) between two GPUs.
        coll_busbw_gbps: achieved NCCL bus bandwidth of ring all-gather / reduce-scatter (nccl-tests
            ``busbw``) among GPUs on this level; for the inter-node level it is per NIC (rail).
        latency_us: latency per hop (one ring step) in microseconds.
        duplex: fraction of ``p2p_gbps`` each direction keeps when both directions are busy
            (1.0: full duplex, as NVLink, InfiniBand and PCIe are).
    """

    name: str
    p2p_gbps: float
    coll_busbw_gbps: float
    latency_us: float
    duplex: float = 1.0


@dataclass(frozen=True)
class HardwareProfile:
    """A GPU model with its intra-node and inter-node links.

    Args:
        name, description: identification (the description says where each number comes from).
        memory_gib: HBM capacity; ``reserved_gib``: what the CUDA context, NCCL and cuBLAS
            workspaces take before the first tensor (usable = ``memory_gib - reserved_gib``).
        peak_tflops: dense datasheet peak per dtype class (``"bf16"``, ``"fp32"``, ...).
        gemm_eff: achieved / peak for large GEMMs (cuBLAS).
        attn_fwd_eff, attn_bwd_eff: achieved / peak of FlashAttention-class fused attention.
        linear_attn_eff: achieved / peak of chunked linear-attention kernels (small d_h x d_h tiles).
        hbm_gbps: achieved device-memory bandwidth (large copies), for memory-bound elementwise work.
        intra, inter: the links; ``inter`` is per GPU (one NIC per GPU, rail-optimised).
        collective_launch_us: fixed cost of issuing one collective / P2P batch (launch + proxy).
        default_gpus_per_node: how many GPUs a node of this kind usually holds.

    Example::

        >>> hw = HardwareProfile.preset("a100-80gb-sxm")
        >>> round(hw.rate("gemm", "bf16") / 1e12)
        250
    """

    name: str
    description: str
    memory_gib: float
    reserved_gib: float
    peak_tflops: dict = field(default_factory=dict)
    gemm_eff: float = 0.8
    attn_fwd_eff: float = 0.6
    attn_bwd_eff: float = 0.5
    linear_attn_eff: float = 0.3
    hbm_gbps: float = 1000.0
    intra: Link = Link("intra", 100.0, 100.0, 5.0)
    inter: Link = Link("inter", 25.0, 25.0, 5.0)
    collective_launch_us: float = 10.0
    default_gpus_per_node: int = 8

    # ---- rates --------------------------------------------------------------------------------
    def peak_flops(self, dtype_class: str = "bf16") -> float:
        """Dense datasheet peak in FLOP/s for a dtype class (``"bf16"`` covers bf16 and fp16)."""
        if dtype_class not in self.peak_tflops:
            raise ValueError(f"hardware {self.name!r}: no peak rate for dtype class {dtype_class!r}; "
                             f"known: {sorted(self.peak_tflops)}")
        return self.peak_tflops[dtype_class] * 1e12

    def rate(self, kind: str, dtype_class: str = "bf16") -> float:
        """Achieved FLOP/s of ``kind`` in ``{"gemm", "attn_fwd", "attn_bwd", "linear_attn"}``."""
        eff = {"gemm": self.gemm_eff, "attn_fwd": self.attn_fwd_eff, "attn_bwd": self.attn_bwd_eff,
               "linear_attn": self.linear_attn_eff}
        if kind not in eff:
            raise ValueError(f"rate kind: expected one of {sorted(eff)}, got {kind!r}")
        return eff[kind] * self.peak_flops(dtype_class)

    @property
    def usable_bytes(self) -> float:
        return (self.memory_gib - self.reserved_gib) * 2**30

    # ---- overrides / serialisation --------------------------------------------------------------
    def with_overrides(self, **kw) -> "HardwareProfile":
        """A copy with fields replaced; link fields as ``intra={"p2p_gbps": 20}`` or ``intra_p2p_gbps=20``.

        Example::

            >>> hw = HardwareProfile.preset("a10-pcie").with_overrides(intra_p2p_gbps=24.0)
            >>> hw.intra.p2p_gbps
            24.0
        """
        own = {f.name for f in fields(self)}
        top, links = {}, {"intra": {}, "inter": {}}
        for k, v in kw.items():
            if k in ("intra", "inter") and isinstance(v, dict):
                links[k].update(v)
            elif k.startswith(("intra_", "inter_")) and k not in own:
                links[k[:5]][k[6:]] = v
            elif k == "peak_tflops":
                top[k] = {**self.peak_tflops, **v}
            elif k in own:
                top[k] = v
            else:
                raise ValueError(f"hardware override: unknown field {k!r}; known: {sorted(own)} and "
                                 "intra_*/inter_* link fields")
        for lvl, upd in links.items():
            if upd:
                link_fields = {f.name for f in fields(Link)}
                bad = set(upd) - link_fields
                if bad:
                    raise ValueError(f"hardware override: unknown {lvl} link field(s) {sorted(bad)}; "
                                     f"known: {sorted(link_fields)}")
                top[lvl] = replace(getattr(self, lvl), **upd)
        return replace(self, **top)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "HardwareProfile":
        """Build from a dict; ``"base"`` names a preset whose fields the others override."""
        d = dict(d)
        base = d.pop("base", None)
        if base is not None:
            return HardwareProfile.preset(base).with_overrides(**d)
        for lvl in ("intra", "inter"):
            if isinstance(d.get(lvl), dict):
                d[lvl] = Link(**d[lvl])
        return HardwareProfile(**d)

    @staticmethod
    def preset(name: str) -> "HardwareProfile":
        key = name.lower()
        if key not in HARDWARE_PRESETS:
            raise ValueError(f"hardware: expected one of {', '.join(sorted(HARDWARE_PRESETS))} or a JSON file, "
                             f"got {name!r}")
        return HARDWARE_PRESETS[key]


HARDWARE_PRESETS: dict[str, HardwareProfile] = {
    "a100-80gb-sxm": HardwareProfile(
        name="a100-80gb-sxm",
        description=(
            "NVIDIA A100-SXM4-80GB in a DGX/HGX A100 node: 312 TFLOP/s dense bf16 (datasheet); large "
            "cuBLAS bf16 GEMMs reach ~250 TFLOP/s (0.80); FlashAttention-2 reaches up to 73% of peak in "
            "forward and ~187-196 TFLOP/s fwd+bwd at head dim 128 (FA2 paper) -> fwd 0.70, bwd 0.58; "
            "chunked linear-attention Triton kernels ~0.35; HBM2e 2039 GB/s datasheet, ~1700 GB/s copy. "
            "NVLink3 via NVSwitch: 300 GB/s per direction, ~230 GB/s NCCL all-gather bus bandwidth and "
            "P2P. InfiniBand HDR 200 Gb/s per GPU (one ConnectX-6 per GPU): 25 GB/s, ~23 GB/s achieved."),
        memory_gib=80.0, reserved_gib=1.5,
        peak_tflops={"bf16": 312.0, "fp32": 19.5, "tf32": 156.0, "fp64": 19.5, "fp8": 312.0},
        gemm_eff=0.80, attn_fwd_eff=0.70, attn_bwd_eff=0.58, linear_attn_eff=0.35, hbm_gbps=1700.0,
        intra=Link("NVLink3/NVSwitch", p2p_gbps=230.0, coll_busbw_gbps=230.0, latency_us=3.0),
        inter=Link("InfiniBand HDR 200Gb/s per GPU", p2p_gbps=23.0, coll_busbw_gbps=23.0, latency_us=5.0),
        collective_launch_us=10.0, default_gpus_per_node=8),
    "h100-sxm": HardwareProfile(
        name="h100-sxm",
        description=(
            "NVIDIA H100-SXM5-80GB in an HGX H100 node: 989 TFLOP/s dense bf16 (datasheet), ~800 TFLOP/s "
            "measured on a large GEMM (0.81); fused attention between FlashAttention-2 (~35% of peak) and "
            "FlashAttention-3 (~60-75%): fwd 0.50, bwd 0.42; linear attention ~0.30; HBM3 3.35 TB/s "
            "datasheet, ~3.0 TB/s copy. NVLink4: 450 GB/s per direction, ~360 GB/s NCCL all-gather bus "
            "bandwidth on 8 GPUs. InfiniBand NDR 400 Gb/s per GPU: 50 GB/s, ~45 GB/s achieved."),
        memory_gib=80.0, reserved_gib=1.5,
        peak_tflops={"bf16": 989.0, "fp32": 67.0, "tf32": 494.0, "fp64": 67.0, "fp8": 1979.0},
        gemm_eff=0.81, attn_fwd_eff=0.50, attn_bwd_eff=0.42, linear_attn_eff=0.30, hbm_gbps=3000.0,
        intra=Link("NVLink4/NVSwitch", p2p_gbps=360.0, coll_busbw_gbps=360.0, latency_us=2.5),
        inter=Link("InfiniBand NDR 400Gb/s per GPU", p2p_gbps=45.0, coll_busbw_gbps=45.0, latency_us=4.0),
        collective_launch_us=8.0, default_gpus_per_node=8),
    "a10-pcie": HardwareProfile(
        name="a10-pcie",
        description=(
            "NVIDIA A10 (24 GB GDDR6, PCIe Gen4 x16, no NVLink): 125 TFLOP/s dense bf16 (datasheet); the "
            "150 W cap throttles sustained GEMMs (~0.65); FlashAttention-2 on sm86 fwd ~0.65, bwd ~0.50; "
            "GDDR6 600 GB/s datasheet, ~500 GB/s copy. GPU-to-GPU traffic crosses the CPU root complex "
            "(no PCIe switch in the usual 4-GPU server): PCIe Gen4 x16 is 31.5 GB/s per direction in "
            "theory, ~12 GB/s per direction in nccl-tests sendrecv on such servers (P2P through the "
            "host bridge or NCCL's shared-memory path); a PCIe-switch server reaches ~22-25 GB/s "
            "(override intra_p2p_gbps). Inter-node: 100 Gb/s Ethernet/RoCE per node (12.5 GB/s)."),
        memory_gib=24.0, reserved_gib=1.0,
        peak_tflops={"bf16": 125.0, "fp32": 31.2, "tf32": 62.5, "fp64": 0.98, "fp8": 125.0},
        gemm_eff=0.65, attn_fwd_eff=0.65, attn_bwd_eff=0.50, linear_attn_eff=0.30, hbm_gbps=500.0,
        intra=Link("PCIe Gen4 x16 via CPU root complex", p2p_gbps=12.0, coll_busbw_gbps=12.0, latency_us=8.0),
        inter=Link("100GbE RoCE per node", p2p_gbps=12.5, coll_busbw_gbps=12.5, latency_us=10.0),
        collective_launch_us=10.0, default_gpus_per_node=4),
}
HARDWARE_PRESETS["a100"] = HARDWARE_PRESETS["a100-80gb-sxm"]
HARDWARE_PRESETS["h100"] = HARDWARE_PRESETS["h100-sxm"]
HARDWARE_PRESETS["a10"] = HARDWARE_PRESETS["a10-pcie"]


def load_hardware(spec, overrides: dict | None = None) -> HardwareProfile:
    """A profile from a preset name, a :class:`HardwareProfile`, a dict, or a JSON file path, with
    optional field overrides.

    A JSON file holds either a full profile or ``{"base": "<preset>", <fields to override>}``, e.g.
    ``{"base": "a100-80gb-sxm", "gemm_eff": 0.72, "inter": {"p2p_gbps": 11.0}}``.

    Example::

        >>> load_hardware("h100", {"gemm_eff": 0.7}).gemm_eff
        0.7
    """
    if isinstance(spec, HardwareProfile):
        hw = spec
    elif isinstance(spec, dict):
        hw = HardwareProfile.from_dict(spec)
    elif isinstance(spec, str) and spec.lower() in HARDWARE_PRESETS:
        hw = HARDWARE_PRESETS[spec.lower()]
    elif isinstance(spec, str) and spec.endswith(".json"):
        try:
            with open(spec) as f:
                data = json.load(f)
        except OSError as e:
            raise ValueError(f"hardware: cannot read {spec!r}: {e}") from None
        hw = HardwareProfile.from_dict(data)
    else:
        raise ValueError(f"hardware: expected one of {', '.join(sorted(HARDWARE_PRESETS))}, a dict or a .json "
                         f"file, got {spec!r}")
    return hw.with_overrides(**overrides) if overrides else hw


__all__ = ["Link", "HardwareProfile", "HARDWARE_PRESETS", "load_hardware"]
