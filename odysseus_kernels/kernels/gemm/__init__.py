"""The persistent Triton GEMM behind the fused TP GEMMs (no communication here)."""
from .configs import GemmConfig, pick
from .persistent import RowMap, Signal, Wait, grid_size, persistent_gemm

__all__ = ["GemmConfig", "RowMap", "Signal", "Wait", "grid_size", "persistent_gemm", "pick"]
