"""Safetensors model directories -> :class:`TextTransformer`, read lazily and straight into the compute dtype.

The module is built on the meta device and each tensor is read from the file (single or sharded) and assigned
in the compute dtype, so peak memory is about the weights' size, with no fp32 copy and no LM head.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import torch

from lib_llmcond.encoders.config import TransformerConfig, config_from_hf
from lib_llmcond.encoders.transformer import TextTransformer
from lib_llmcond.errors import ModelFileError
from lib_llmcond.safetensors_file import Entry, map_tensor, read_header, read_tensor
from lib_llmcond.skeleton import meta_skeleton

# family -> (prefixes mapped to our names, prefixes of tensors we never need)
KEY_PREFIXES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gemma3": (
        ("model.language_model.", "language_model.model.", "model."),
        (
            "lm_head.",
            "vision_tower.",
            "multi_modal_projector.",
            "model.vision_tower.",
            "model.multi_modal_projector.",
        ),
    ),
    "qwen3": (("model.",), ("lm_head.",)),
    "t5gemma": (("model.encoder.", "encoder."), ("model.decoder.", "decoder.", "lm_head.")),
}


def read_config(directory: Path) -> tuple[dict, TransformerConfig]:
    path = directory / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelFileError(
            "this folder has no config.json", path=directory, fix="use the whole HF model folder"
        ) from e
    except (OSError, ValueError) as e:
        raise ModelFileError(
            f"config.json is unreadable ({e})", path=path, fix="re-download the model"
        ) from e
    return raw, config_from_hf(raw, path=path)


def weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError) as e:
            raise ModelFileError(
                f"the shard index is unreadable ({e})", path=index, fix="re-download it"
            ) from e
        files = [directory / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelFileError(
                f"missing shards: {', '.join(missing)}", path=directory, fix="download every shard"
            )
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelFileError(
            "no .safetensors weights in this folder",
            path=directory,
            fix="download the model's safetensors files (pickled .bin weights are not loaded)",
        )
    return files


def _map_key(key: str, family: str) -> str | None:
    """Our parameter name for ``key``; None for tensors we skip. Unknown keys map to themselves."""
    keep, skip = KEY_PREFIXES[family]
    if key.startswith(skip):
        return None
    for prefix in keep:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def iter_tensors(files: list[Path], family: str) -> Iterator[tuple[str, str, Path, Entry]]:
    """(our name, file key, file, its table entry) for every tensor we need; all headers are checked first."""
    for header in [read_header(f) for f in files]:
        for key, entry in header.entries.items():
            name = _map_key(key, family)
            if name is not None:
                yield name, key, header.path, entry


def load_transformer(
    directory: str | Path, *, dtype: torch.dtype, device: str | torch.device = "cpu"
) -> tuple[TransformerConfig, TextTransformer]:
    """On the CPU, tensors already in ``dtype`` stay mapped from the file, each on its own (see
    ``safetensors_file``); others are read, converted and moved one at a time."""
    directory, device = Path(directory), torch.device(device)
    _, cfg = read_config(directory)
    with meta_skeleton():
        model = TextTransformer(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    with contextlib.ExitStack() as stack:
        handles: dict[Path, BinaryIO] = {}
        for name, key, path, entry in iter_tensors(weight_files(directory), cfg.family):
            if name not in expected:
                unexpected.append(key)
                continue
            if entry.shape != expected[name]:
                raise ModelFileError(
                    f"tensor {key} has shape {list(entry.shape)}, the config implies {list(expected[name])}",
                    path=path,
                    fix="the weights do not belong to this config.json",
                )
            if path not in handles:
                handles[path] = stack.enter_context(path.open("rb"))
            keep_mapped = device.type == "cpu" and entry.torch_dtype == dtype
            tensor = (map_tensor if keep_mapped else read_tensor)(handles[path], entry, path, key)
            state[name] = tensor.to(device=device, dtype=dtype)
    _check_complete(expected, state, unexpected, directory)
    model.load_state_dict(state, assign=True, strict=True)
    return cfg, model.eval().requires_grad_(False)


def _check_complete(expected: dict, state: dict, unexpected: list[str], directory: Path) -> None:
    missing = sorted(set(expected) - set(state))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(
                f"unexpected tensors: {', '.join(unexpected[:6])}{' ...' if len(unexpected) > 6 else ''}"
            )
        raise ModelFileError("; ".join(parts), path=directory, fix="the weights do not match config.json")
