"""Load a GGUF text encoder: config from metadata, module built without allocating weights, GGUF tensors attached.

``load_gguf_module`` works with any module whose parameter names are HF-style (our ``TextTransformer``, or
transformers' classes in the tests); ``load_gguf_transformer`` is it with our native transformer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attach import attach_gguf
from .reader import GGUFFile, hf_config, open_gguf


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
    cfg = hf_config(gf)
    with parameters_on_meta():
        model = factory(cfg)
    attach_gguf(model, gf, dtype=dtype, device=device, dequantize=dequantize)
    model.to(device)  # buffers (rope tables); parameters are already there
    return model.eval().requires_grad_(False)


def load_gguf_transformer(
    path: str | Path, *, dtype: torch.dtype, device: str | torch.device = "cpu", dequantize: str = "none"
):
    """``(TransformerConfig, TextTransformer)`` of a GGUF file; weights stay quantized unless ``dequantize="all"``."""
    from ..config import config_from_hf
    from ..transformer import TextTransformer

    holder: dict[str, Any] = {}

    def factory(cfg: dict[str, Any]) -> nn.Module:
        holder["config"] = config_from_hf(cfg, path=path)
        return TextTransformer(holder["config"])

    model = load_gguf_module(path, factory, dtype=dtype, device=device, dequantize=dequantize)
    return holder["config"], model
