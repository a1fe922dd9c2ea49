"""Feature detection for the torch versions the hosts pin (2.1 on A1111) up to current releases."""

from __future__ import annotations

import functools
import inspect

import torch


@functools.cache
def sdpa_supports_enable_gqa() -> bool:
    """``scaled_dot_product_attention(enable_gqa=...)`` arrived in torch 2.5."""
    try:
        return "enable_gqa" in inspect.signature(torch.nn.functional.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def has_fused_rms_norm() -> bool:
    """``torch.nn.functional.rms_norm`` arrived in torch 2.4 (a fused CUDA kernel behind it later)."""
    return hasattr(torch.nn.functional, "rms_norm")


def has_torch_compile() -> bool:
    return hasattr(torch, "compile")


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matmuls run on ``device`` (always on CPU; on CUDA per device capability)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu"
