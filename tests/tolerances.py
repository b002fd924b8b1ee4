"""The shared tolerance table and error measures for kernel parity tests (SPEC 6.5).

Kernels are judged against a float64 reference by relative norm error ||out - ref|| / ||ref||:
float32 paths must stay within ``FP32_REL_ERR``; a bf16/fp16 path must be no worse than
``LOW_PRECISION_FACTOR`` times the error of the same-dtype PyTorch reference (the bound never drops under a
small floor, so that a reference that happens to be nearly exact does not demand exactness).
"""
from __future__ import annotations

import torch

FP32_REL_ERR = 1e-5
# The Triton interpreter and the C++ kernel reorder sums; float32 gradients that are sums over L=4096
# steps lose a little more than outputs do.
FP32_GRAD_REL_ERR = 1e-4
LOW_PRECISION_FACTOR = 2.0
LOW_PRECISION_FLOOR = {torch.float16: 1e-4, torch.bfloat16: 1e-3}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def rel_err(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """||actual - reference|| / ||reference||, in float64; NaN anywhere gives inf."""
    actual64 = actual.detach().to(torch.float64).cpu()
    reference64 = reference.detach().to(torch.float64).cpu()
    if not torch.isfinite(actual64).all():
        return float("inf")
    denominator = reference64.norm().item()
    numerator = (actual64 - reference64).norm().item()
    return numerator / denominator if denominator > 0 else numerator


def assert_fp32_close(actual, reference, what: str, bound: float = FP32_REL_ERR) -> None:
    error = rel_err(actual, reference)
    assert error <= bound, f"{what}: relative error {error:.3e} > {bound:.0e}"


def assert_low_precision_close(actual, same_dtype_reference, reference64, what: str) -> None:
    """``actual`` (bf16/fp16 kernel) is no worse than 2x the same-dtype PyTorch reference's error."""
    dtype = same_dtype_reference.dtype
    baseline = rel_err(same_dtype_reference, reference64)
    bound = max(LOW_PRECISION_FACTOR * baseline, LOW_PRECISION_FLOOR.get(dtype, 0.0))
    error = rel_err(actual, reference64)
    assert error <= bound, f"{what}: relative error {error:.3e} > {bound:.3e} (reference {baseline:.3e})"

# focal_loss: gradcheck of the hand-written focal gradients in float64 (the Triton path's helper series for
# expm1/log1p are exact to ~1e-9 relative, well inside these).
FOCAL_GRADCHECK_ATOL = 1e-6
FOCAL_GRADCHECK_RTOL = 1e-4
# The confident-logit case means something only if p_y is this close to 1 (cross-entropy at most this, in
# float64): there fp32's 1 - exp(-ce) has a relative error of ~eps32 / ce > 5e-3, which expm1 avoids.
FOCAL_CONFIDENT_CE_MAX = 1e-5

# contrastive_loss: float64 gradcheck of the hand-written backward (both paths are exact up to float64
# rounding of O(N M D) sums, far inside these).
CONTRASTIVE_GRADCHECK_ATOL = 1e-6
CONTRASTIVE_GRADCHECK_RTOL = 1e-4

# selective_scan: gradients that sum a million products (dA, dB over batch·dim·L) in float32, and the
# extreme-Δ case (4097 steps, Δ from 1e-4 to 1e2), keep this much of float32's precision.
SCAN_EXTREME_REL_ERR = 1e-4
