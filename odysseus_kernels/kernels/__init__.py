"""Local compute only (no communication): torch references, Triton kernels, extension wrappers."""
