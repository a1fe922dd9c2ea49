"""Clearly labelled random adapter files (no trained weights) for the demo and the tests.

Any shape the loaders accept, the real ones included (``PRESETS``), in any accepted key layout."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import torch

from ..adapters import perceiver
from ..adapters.llm_to_sdxl import LLMToSDXLAdapter, LLMToSDXLConfig
from ..adapters.perceiver import PerceiverConfig, PerceiverResampler

METADATA = {"llmcond": "tiny random adapter for tests; not a trained model"}


def llm_to_sdxl_config(
    llm_dim: int, *, n_wide: int = 2, n_narrow: int = 3, dim: int = 2048, input_norm: bool = False, **kw: int
) -> LLMToSDXLConfig:
    return LLMToSDXLConfig(
        llm_dim=llm_dim, n_wide=n_wide, n_narrow=n_narrow, dim=dim, input_norm=input_norm, **kw
    )


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Values at scales that keep activations in a realistic range: fan-in-scaled weights, small biases and
    embeddings, LayerNorm gains near 1."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        shape = shapes[key]
        t = torch.randn(shape, generator=g)
        if _is_norm(key, shapes):
            t = 1.0 + 0.1 * t if key.endswith("weight") else 0.1 * t
        elif len(shape) == 2:
            t = t / math.sqrt(shape[1])
        elif key.endswith("bias"):
            t = 0.02 * t
        else:  # embeddings, learned queries and tokens
            t = 0.5 * t
        out[key] = t.contiguous()
    return out


def _is_norm(key: str, shapes: dict[str, tuple[int, ...]]) -> bool:
    return bool(re.search(r"(norm[^.]*|pooled_projection\.1)\.(weight|bias)$", key)) or (
        key.endswith("bias") and len(shapes.get(key[: -len("bias")] + "weight", ())) == 1
    )


def llm_to_sdxl_state_dict(config: LLMToSDXLConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        module = LLMToSDXLAdapter(config)
    return random_state_dict({k: tuple(v.shape) for k, v in module.state_dict().items()}, seed)


def perceiver_state_dict(config: PerceiverConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        module = PerceiverResampler(config)
    return random_state_dict({k: tuple(v.shape) for k, v in module.state_dict().items()}, seed)


def _split_qkv(sd: dict[str, torch.Tensor], base: str, target: Callable[[str, str], str]) -> None:
    for kind, name in (("weight", "in_proj_weight"), ("bias", "in_proj_bias")):
        for which, part in zip("qkv", sd.pop(f"{base}.{name}").chunk(3, dim=0)):
            sd[target(which, kind)] = part.contiguous()


def to_layout(sd: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """REF-layout tensors rewritten in another accepted layout: "ref", "split" or "converted"."""
    sd = dict(sd)
    if layout == "ref":
        return sd
    bases = sorted({k.rsplit(".", 1)[0] for k in sd if k.endswith(".in_proj_weight")})
    for base in bases:
        if layout == "split":
            _split_qkv(sd, base, lambda w, kind, b=base: f"{b}.{w}_proj.{kind}")
            out = "o_proj"
            new_base = base
        elif layout == "converted":
            new_base = base[: -len(".attn")] if base.endswith(".attn") else base.replace("_attention", "")
            sep = "." if base.endswith(".attn") else "_"
            _split_qkv(sd, base, lambda w, kind, nb=new_base, s=sep: f"{nb}{s}{w}_proj.{kind}")
            out = None
        else:
            raise ValueError(f"unknown layout {layout!r}")
        for kind in ("weight", "bias"):
            t = sd.pop(f"{base}.out_proj.{kind}")
            if out:
                sd[f"{new_base}.{out}.{kind}"] = t
            else:
                sep = "." if base.endswith(".attn") else "_"
                sd[f"{new_base}{sep}out_proj.{kind}"] = t
    return sd


def save_tensors(
    path: str | Path,
    sd: dict[str, torch.Tensor],
    dtype: torch.dtype = torch.float32,
    meta: dict | None = None,
) -> Path:
    """.safetensors (``meta`` in its metadata) or, for other suffixes, a torch pickle of a plain state dict
    (``meta`` under a ``config`` key, as training scripts often save it)."""
    path = Path(path)
    sd = {k: v.to(dtype).contiguous() for k, v in sd.items()}
    meta = {k: str(v) for k, v in (meta or {}).items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path), metadata={**METADATA, **meta})
    else:
        torch.save({"state_dict": sd, "config": meta} if meta else sd, str(path))
    return path


def write_tiny_adapter(
    path: str | Path,
    *,
    llm_dim: int,
    layout: str = "ref",
    n_wide: int = 2,
    n_narrow: int = 3,
    dim: int = 2048,
    seed: int = 0,
    family: str = "llm_to_sdxl",
    input_norm: bool = False,
    dtype: torch.dtype = torch.float32,
    **shape: int,
) -> Path:
    """Write a random adapter. ``shape`` passes further sizes (``mlp_hidden``, ``output_len``...); for the
    Perceiver family ``n_wide`` is the depth and ``layout`` one of ``perceiver.LAYOUTS``."""
    meta: dict = {}
    if family == "llm_to_sdxl":
        config = llm_to_sdxl_config(
            llm_dim, n_wide=n_wide, n_narrow=n_narrow, dim=dim, input_norm=input_norm, **shape
        )
        sd = to_layout(llm_to_sdxl_state_dict(config, seed), layout)
    elif family == "perceiver":
        if layout == "ref":
            layout = "plain"
        config = PerceiverConfig(llm_dim=llm_dim, dim=dim, depth=n_wide, **shape)
        sd = perceiver.to_layout(perceiver_state_dict(config, seed), layout)
        meta = {"heads": config.heads, "max_input_len": config.max_input_len}
    else:
        raise ValueError(f"unknown adapter family {family!r}")
    return save_tensors(path, sd, dtype, meta)
