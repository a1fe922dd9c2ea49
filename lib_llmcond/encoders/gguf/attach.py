"""Put a GGUF file's tensors into a module with HF-style parameter names.

Float tensors and small ones become ordinary parameters in the compute dtype. Quantized tensors of ``nn.Linear`` and
``nn.Embedding`` children replace those children with ``GGUFLinear``/``GGUFEmbedding`` holding the raw bytes (on
CPU: a view of the memory-mapped file, no copy), unless ``dequantize="all"`` asks for dense weights everywhere or
``dequantize="linears"`` for dense linears (the embedding stays quantized, its rows decoded as a prompt uses them).
Weights dequantized at load are read from the file with plain reads, not through the mapping, so their quantized
bytes never become resident pages of this process.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from ...errors import ModelFileError
from .dequant import FLOAT_TYPES, dequantize
from .quantized import GGUFEmbedding, GGUFLinear
from .reader import GGUFFile, check_architecture, hf_name, is_stored_plus_one

DEQUANTIZE_MODES = ("none", "linears", "all")


def raw_tensor(gf: GGUFFile, name: str, device: torch.device) -> torch.Tensor:
    """A tensor's bytes as a uint8 torch tensor; on CPU it shares memory with the mapped file."""
    arr = gf.tensor_bytes(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # copy-on-write maps are writable; nothing here writes to them
        t = torch.from_numpy(np.asarray(arr))
    return t if device.type == "cpu" else t.to(device)


def read_tensor_bytes(gf: GGUFFile, name: str, device: torch.device) -> torch.Tensor:
    """A tensor's bytes read into our own memory (the mapping is not touched), ``byte_shape`` uint8."""
    info = gf.tensors[name]
    buf = torch.empty(info.n_bytes, dtype=torch.uint8)
    with gf.path.open("rb") as f:
        f.seek(info.offset)
        if f.readinto(buf.numpy()) != info.n_bytes:
            raise ModelFileError(
                f"tensor {name} is cut short", path=gf.path, fix="Download the GGUF file again."
            )
    return buf.reshape(info.byte_shape).to(device)


def dense_tensor(gf: GGUFFile, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    info = gf.tensors[name]
    raw = read_tensor_bytes(gf, name, device)
    if is_stored_plus_one(gf.architecture, name):
        return (dequantize(raw, info.type_id, info.shape, dtype=torch.float32) - 1.0).to(dtype)
    return dequantize(raw, info.type_id, info.shape, dtype=dtype)


def _split(path: str) -> tuple[str, str]:
    parent, _, leaf = path.rpartition(".")
    return parent, leaf


def attach_gguf(
    model: nn.Module,
    gf: GGUFFile,
    *,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    dequantize: str = "none",
) -> dict[str, str]:
    """Fill ``model`` from ``gf``; returns ``{our name: quant type name}`` of the tensors kept quantized.

    Every parameter of ``model`` must be provided by the file; a missing one is a ``ModelFileError``.
    """
    if dequantize not in DEQUANTIZE_MODES:
        raise ValueError(f"dequantize must be one of {DEQUANTIZE_MODES}, not {dequantize!r}")
    arch = check_architecture(gf)
    device = torch.device(device)
    wanted = dict(model.named_parameters())
    kept: dict[str, str] = {}
    for gname, info in gf.tensors.items():
        ours = hf_name(arch, gname)
        if ours is None or ours not in wanted:
            continue
        del wanted[ours]
        parent_name, leaf = _split(ours)
        parent = model.get_submodule(parent_name)
        keep = (nn.Linear, nn.Embedding) if dequantize == "none" else (nn.Embedding,)
        quantized = info.type_id not in FLOAT_TYPES and dequantize != "all" and leaf == "weight"
        if quantized and isinstance(parent, keep):
            _swap(model, parent_name, parent, gf, gname, dtype, device)
            kept[ours] = info.type_id
            continue
        _set_param(parent, leaf, dense_tensor(gf, gname, dtype, device), gf, gname)
    if wanted:
        raise ModelFileError(
            f"the GGUF lacks tensors the {arch} model needs: {', '.join(sorted(wanted)[:5])}",
            path=gf.path,
            fix="Re-export the model with a current llama.cpp convert script.",
        )
    return kept


def _set_param(module: nn.Module, leaf: str, value: torch.Tensor, gf: GGUFFile, gname: str) -> None:
    old = getattr(module, leaf)
    if tuple(old.shape) != tuple(value.shape):
        raise ModelFileError(
            f"tensor {gname} has shape {tuple(value.shape)}, the model expects {tuple(old.shape)}",
            path=gf.path,
            fix="The metadata and tensors disagree: re-export the file.",
        )
    setattr(module, leaf, nn.Parameter(value, requires_grad=False))


def _swap(
    model: nn.Module,
    name: str,
    old: nn.Module,
    gf: GGUFFile,
    gname: str,
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    info = gf.tensors[gname]
    if tuple(old.weight.shape) != info.shape:
        raise ModelFileError(
            f"tensor {gname} has shape {info.shape}, the model expects {tuple(old.weight.shape)}",
            path=gf.path,
            fix="The metadata and tensors disagree: re-export the file.",
        )
    raw = raw_tensor(gf, gname, device)
    if isinstance(old, nn.Linear):
        bias = None if old.bias is None else old.bias.detach().to(device=device, dtype=dtype)
        new: nn.Module = GGUFLinear(raw, info.type_id, info.shape, bias)
    else:
        scale = getattr(old, "embed_scale", None)
        new = GGUFEmbedding(
            raw,
            info.type_id,
            info.shape,
            dtype,
            None if scale is None else float(scale),
            (gf.path, info.offset),
        )
    parent_name, leaf = _split(name)
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)
