"""Load a GGUF text encoder: config from metadata, module built without allocating weights, GGUF tensors attached.

``load_gguf_module`` works with any module whose parameter names are HF-style (our ``TextTransformer``, or
transformers' classes in the tests); ``load_gguf_transformer`` is it with our native transformer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attach import attach_gguf
from .dequant import FLOAT_TYPES
from .reader import GGUFFile, hf_config, open_gguf

# dequantize="auto": the linears are dequantized once at load when their dense copy takes at most this fraction
# of the file (small models, whose file is mostly the embedding: Gemma-3 270M Q4_K_M, 0.79); resident memory then
# stays under 1.15x the file and each encode costs what its prompt costs. Larger models keep their linears
# quantized and dequantize one layer at a time per forward (memory ~ the file, slower per call).
DENSE_LINEARS_LIMIT = 0.85


def auto_dequantize(gf: GGUFFile, dtype: torch.dtype) -> str:
    """ "linears" when the dense linears fit under ``DENSE_LINEARS_LIMIT`` x the file size, else "none"."""
    dense = torch.empty((), dtype=dtype).element_size() * sum(
        math.prod(info.shape)
        for name, info in gf.tensors.items()
        if info.type_id not in FLOAT_TYPES and not name.startswith("token_embd")
    )
    return "linears" if dense <= DENSE_LINEARS_LIMIT * gf.path.stat().st_size else "none"


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules whose parameters live on the meta device (no memory, no init); buffers stay real."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def load_gguf_module(
    path: str | Path | GGUFFile,
    factory: Callable[[dict[str, Any]], nn.Module],
    *,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    dequantize: str = "none",
) -> nn.Module:
    """``factory(hf_config_dict)`` built with meta parameters, then filled from the file; eval mode, no grad."""
    gf = path if isinstance(path, GGUFFile) else open_gguf(path)
    if dequantize == "auto":
        dequantize = auto_dequantize(gf, dtype)
    cfg = hf_config(gf)
    with parameters_on_meta():
        model = factory(cfg)
    attach_gguf(model, gf, dtype=dtype, device=device, dequantize=dequantize)
    model.to(device)  # buffers (rope tables); parameters are already there
    return model.eval().requires_grad_(False)


def load_gguf_transformer(
    path: str | Path, *, dtype: torch.dtype, device: str | torch.device = "cpu", dequantize: str = "auto"
):
    """``(TransformerConfig, TextTransformer)`` of a GGUF file; ``dequantize``: "none" (weights stay
    quantized), "linears", "all", or "auto" (:func:`auto_dequantize`)."""
    from ...skeleton import meta_skeleton
    from ..config import config_from_hf
    from ..transformer import TextTransformer

    holder: dict[str, Any] = {}

    def factory(cfg: dict[str, Any]) -> nn.Module:
        holder["config"] = config_from_hf(cfg, path=path)
        with meta_skeleton():  # no initialisers: they would allocate (and import) for nothing
            return TextTransformer(holder["config"])

    model = load_gguf_module(path, factory, dtype=dtype, device=device, dequantize=dequantize)
    return holder["config"], model
