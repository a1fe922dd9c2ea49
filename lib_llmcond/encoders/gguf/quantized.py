"""Linear and embedding modules that hold GGUF bytes and dequantize at forward time.

The bytes are a uint8 buffer (so ``module.to(device)`` moves them and ``module.to(dtype)`` leaves them alone); the
dense weight exists only for the duration of one layer's matmul, in the input's dtype and on its device. The
embedding decodes only the rows it gathers, since GGUF rows are whole blocks.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .dequant import dequantize, quant_type


class GGUFLinear(nn.Module):
    def __init__(
        self, raw: torch.Tensor, type_id: int, shape: tuple[int, int], bias: torch.Tensor | None = None
    ):
        super().__init__()
        self.type_id, self.shape = int(type_id), tuple(shape)
        self.out_features, self.in_features = self.shape
        self.register_buffer("qweight", raw, persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def dense_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize(self.qweight, self.type_id, self.shape, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dense_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {quant_type(self.type_id).name}"


class GGUFEmbedding(nn.Module):
    """Token embedding over GGUF rows; ``scale`` (Gemma's sqrt(hidden)) is applied when the replaced module had it."""

    def __init__(
        self,
        raw: torch.Tensor,
        type_id: int,
        shape: tuple[int, int],
        dtype: torch.dtype,
        scale: float | None = None,
        source: tuple[Path, int] | None = None,
    ):
        super().__init__()
        self.type_id, self.shape, self.dtype = int(type_id), tuple(shape), dtype
        self.num_embeddings, self.embedding_dim = self.shape
        self.register_buffer("qweight", raw, persistent=False)
        self.scale = scale
        self.source = source  # (file, offset of row 0): on the CPU, rows are read, not faulted in

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The raw rows of ``ids``. On the CPU with a known file they are read with ``pread``: touching the
        mapping would fault in ~64 KB around every row (the kernel's fault-around), which stays resident."""
        if self.source is None or self.qweight.device.type != "cpu":
            return self.qweight[ids.to(self.qweight.device)]
        path, offset = self.source
        width = self.qweight.shape[-1]
        unique, inverse = torch.unique(ids, return_inverse=True)
        buf = np.empty((len(unique), width), dtype=np.uint8)
        fd = os.open(path, os.O_RDONLY)
        try:
            for i, row in enumerate(unique.tolist()):
                buf[i] = np.frombuffer(os.pread(fd, width, offset + row * width), dtype=np.uint8)
        finally:
            os.close(fd)
        return torch.from_numpy(buf)[inverse]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = self._rows(input_ids.reshape(-1))
        out = dequantize(rows, self.type_id, (*input_ids.shape, self.embedding_dim), dtype=self.dtype)
        if (
            self.scale is not None
        ):  # rounded like the dense model: scale in the compute dtype, product rounded once
            out = out * torch.tensor(self.scale, dtype=self.dtype, device=out.device)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {quant_type(self.type_id).name}"
