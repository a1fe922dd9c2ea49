"""Linear layers whose weights are pre-packed once for oneDNN, for models that compute on the CPU.

``F.linear`` on the CPU re-lays the weight into oneDNN's blocked format on every call. Doing that once, at
the layer's first forward on the CPU (not at load, so loading stays a plain read), makes the same GEMM 1.1-1.9x faster in bf16 and 1.4-3x faster in fp32 on an AVX-512 CPU
(``benchmarks/``), with the same maths (only the summation order of the dot products can differ).

Feature-detected: where torch lacks the oneDNN ops, or oneDNN cannot run the dtype, nothing is packed.
``LLMCOND_PACK=0`` in the environment switches packing off.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

_PACKABLE = (torch.float32, torch.bfloat16)


@functools.cache
def packing_available(dtype: torch.dtype) -> bool:
    """Whether oneDNN's packed linear runs ``dtype`` here and agrees with ``F.linear`` on a small case."""
    if dtype not in _PACKABLE or os.environ.get("LLMCOND_PACK", "1") == "0":
        return False
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3, 5, 24, generator=g).to(dtype)
        w, b = torch.randn(40, 24, generator=g).to(dtype), torch.randn(40, generator=g).to(dtype)
        got = _packed_forward(x, torch.ops.mkldnn._reorder_linear_weight(w, None), b)
        want = F.linear(x, w, b)
        return got.shape == want.shape and bool(
            torch.allclose(got.float(), want.float(), atol=0.1, rtol=0.02)
        )
    except (AttributeError, RuntimeError, TypeError):  # older torch, or a build without oneDNN
        return False


def _packed_forward(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def can_pack(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and not weight.is_meta and packing_available(weight.dtype)


class PackedLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` held in oneDNN's layout; moved off the CPU it falls back to ``F.linear``.

    The weight is packed at the first CPU forward and the dense one dropped then (no second copy in memory);
    :meth:`dense_weight` rebuilds it.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self._packed: torch.Tensor | None = None
        self._dense: torch.Tensor | None = weight.detach()
        self._pending = True  # pack at the next CPU forward

    def _pack(self) -> None:
        self._pending = False
        if self._dense is not None and can_pack(self._dense):
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self._dense.contiguous(), None)
            self._dense = None

    def dense_weight(self) -> torch.Tensor:
        return self._dense if self._dense is not None else self._packed.to_dense()

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight, for readers (a copy while packed: writing to it changes nothing)."""
        return self.dense_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._pending and x.device.type == "cpu":
            self._pack()
        if self._packed is not None and x.device.type == "cpu":
            return _packed_forward(x, self._packed, self.bias)
        return F.linear(x, self.dense_weight(), self.bias)

    def _apply(self, fn, *args, **kwargs):  # .to(), .float(), ...: move the dense weight, repack on the CPU
        weight = fn(self.dense_weight())
        super()._apply(fn, *args, **kwargs)
        self._packed, self._dense, self._pending = None, weight, True
        return self

    def extra_repr(self) -> str:
        state = "packed" if self._packed is not None else "to pack" if self._pending else "dense"
        return f"in_features={self.in_features}, out_features={self.out_features}, {state}"


def packed(linear: nn.Module) -> nn.Module:
    """``linear`` as a :class:`PackedLinear` when it is a plain ``nn.Linear`` whose weight can be packed, else
    ``linear`` itself (subclasses may change ``forward``; an already packed layer stays as it is)."""
    if type(linear) is not nn.Linear or not can_pack(linear.weight):
        return linear
    return PackedLinear(linear.weight, linear.bias)


def pack_linears(root: nn.Module) -> int:
    """Replace every ``nn.Linear`` under ``root`` by a packed one where possible; returns how many."""
    count = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            new = packed(child)
            if new is not child:
                setattr(parent, name, new)
                count += 1
    return count
