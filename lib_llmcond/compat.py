"""Feature detection for the torch versions the hosts pin (2.1 on A1111) up to current releases."""

from __future__ import annotations

import functools
import inspect

import torch

from lib_llmcond import devices


@functools.cache
def sdpa_supports_enable_gqa() -> bool:
    """``scaled_dot_product_attention(enable_gqa=...)`` arrived in torch 2.5."""
    try:
        return "enable_gqa" in inspect.signature(torch.nn.functional.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def bmm_writes_fp32(device: torch.device) -> bool:
    """``torch.bmm(a, b, out_dtype=torch.float32)`` for half-precision inputs: CUDA only, in newer torch."""
    return device.type == "cuda" and _has_overload(torch.ops.aten.bmm, "dtype")


@functools.cache
def _has_overload(op, name: str) -> bool:
    try:
        return name in op.overloads()
    except (AttributeError, RuntimeError):
        return False


def has_fused_rms_norm() -> bool:
    """``torch.nn.functional.rms_norm`` arrived in torch 2.4 (a fused CUDA kernel behind it later)."""
    return hasattr(torch.nn.functional, "rms_norm")


def has_torch_compile() -> bool:
    return hasattr(torch, "compile")


BF16_MIN_CAPABILITY = (8, 0)  # Ampere: native bf16 tensor cores; older cards only emulate it (slowly)


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 natively: always on the CPU; on CUDA when *that* device (its own index, not
    the current one) has compute capability >= 8.0. ``torch.cuda.is_bf16_supported()`` is not asked: it says
    yes through emulation on older cards and only about the current device."""
    if device.type == "cuda":
        index = devices.current_cuda_index() if device.index is None else device.index
        return devices.capability(torch.device("cuda", index)) >= BF16_MIN_CAPABILITY
    return device.type == "cpu"
