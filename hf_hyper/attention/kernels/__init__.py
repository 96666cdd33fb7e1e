"""Triton kernels only: no torch logic, no launch decisions (those are in `fused/`)."""
