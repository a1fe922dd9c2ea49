"""Load and inspect adapter files: family from the keys (never the file name), hyperparameters from the
shapes, strict key/shape checks with a message that names what is missing, extra or misshapen."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import IncompatibleModelsError, ModelFileError
from ..skeleton import meta_skeleton
from . import llm_to_sdxl
from .base import Adapter
from .files import TensorFile, open_tensor_file
from .layouts import KeyPlan, plan_keys

SDXL_CROSSATTN_DIM = 2048
SDXL_POOLED_DIM = 1280


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    family: str  # "llm_to_sdxl" | "perceiver"
    layout: str
    llm_dim: int
    max_input_tokens: int
    output_tokens: int
    output_dim: int
    pooled_dim: int
    blocks: dict[str, int] = field(default_factory=dict)
    params: int = 0
    dtype: str = ""  # on disk
    tensors: int = 0  # on disk


def detect_family(keys: Sequence[str]) -> str | None:
    if any(k == "compression_queries" or k.startswith("wide_attention_blocks.") for k in keys):
        return "llm_to_sdxl"
    from . import perceiver

    if perceiver.looks_like_perceiver(keys):
        return "perceiver"
    return None


def inspect_adapter(path: str | Path) -> AdapterInfo:
    """What the file is, from its header (tensors are not read for .safetensors)."""
    tf = open_tensor_file(path)
    family, plan, config = _analyse(tf)
    return _info(tf, family, plan, config)


def load_adapter(
    path: str | Path, *, device: str | torch.device = "cpu", pack: bool = True, mapped: bool = False
) -> Adapter:
    """An fp32 adapter in eval mode, loaded strictly; on the CPU its linears are packed for oneDNN unless
    ``pack`` is False (then the module holds exactly the file's tensors as parameters). ``mapped``: fp32
    tensors stay mapped from the file (``TensorFile.reader``)."""
    tf = open_tensor_file(path)
    family, plan, config = _analyse(tf)
    module = _build(lambda: _module_for(family, config))
    with tf.reader(mapped=mapped) as read:
        state = plan.build(read)
    _load_strict(module, state, tf.path)
    module.requires_grad_(False)
    module = module.to(device).eval()
    if pack and torch.device(device).type == "cpu":
        module.pack_for_cpu()
    return module


def check_pair(llm_hidden_size: int, info: AdapterInfo) -> str | None:
    """None when an LLM of this hidden size can feed this adapter, else the reason it cannot."""
    if info.output_dim != SDXL_CROSSATTN_DIM or info.pooled_dim != SDXL_POOLED_DIM:
        return (
            f"{info.path.name} makes {info.output_dim}-d tokens and a {info.pooled_dim}-d pooled vector; "
            f"SDXL needs {SDXL_CROSSATTN_DIM} and {SDXL_POOLED_DIM}"
        )
    if llm_hidden_size != info.llm_dim:
        return (
            f"{info.path.name} takes {info.llm_dim}-d LLM hidden states, this LLM gives {llm_hidden_size}-d"
            + _preset_hint(info.llm_dim)
        )
    return None


def ensure_pair(llm_hidden_size: int, info: AdapterInfo) -> None:
    reason = check_pair(llm_hidden_size, info)
    if reason:
        raise IncompatibleModelsError(reason, path=info.path, fix="Pick an adapter trained for this LLM")


_HINTS = {1152: "Gemma-3 1B", 2304: "the T5Gemma 2B encoder", 2560: "Qwen3-4B"}


def _preset_hint(llm_dim: int) -> str:
    name = _HINTS.get(llm_dim)
    return f" (it was made for {name})" if name else ""


def _module_for(family: str, config) -> Adapter:
    if family == "llm_to_sdxl":
        return llm_to_sdxl.LLMToSDXLAdapter(config)
    from . import perceiver

    return perceiver.PerceiverResampler(config)


def _analyse(tf: TensorFile):
    """(family, key plan, config), with every key and shape checked against the module the config makes."""
    family = detect_family(list(tf.shapes))
    if family == "llm_to_sdxl":
        plan = plan_keys(tf.shapes)
        return family, plan, _check_llm_to_sdxl(plan, tf.path)
    if family == "perceiver":
        return family, *_check_perceiver(tf)
    raise ModelFileError(
        "not an adapter llmcond knows: no LLMToSDXLAdapter keys (compression_queries, wide_attention_blocks.*) "
        f"and no Perceiver-resampler latents; its keys: {_sample(tf.shapes)}",
        path=tf.path,
        fix="Use a RouWei LLMToSDXLAdapter .safetensors or a Perceiver resampler file",
    )


def _check_llm_to_sdxl(plan: KeyPlan, path: Path) -> None:
    try:
        config = llm_to_sdxl.config_from_shapes(plan.shapes)
    except KeyError as err:
        raise ModelFileError(
            f"incomplete LLMToSDXLAdapter file: missing {', '.join(err.args[0])}", path=path, fix=_FIX
        ) from err
    if config.dim % llm_to_sdxl.HEADS:
        raise ModelFileError(f"width {config.dim} is not divisible by 16 heads", path=path, fix=_FIX)
    expected = _expected_shapes(lambda: llm_to_sdxl.LLMToSDXLAdapter(config))
    compare_shapes(expected, plan, path, f"LLMToSDXLAdapter ({plan.layout} layout)")
    return config


def _check_perceiver(tf: TensorFile):
    from . import perceiver

    plan = perceiver.plan_keys(tf.shapes, tf.path)
    try:
        config = perceiver.config_from_plan(plan, tf.meta)
    except KeyError as err:
        raise ModelFileError(
            f"incomplete Perceiver resampler ({plan.layout} layout): missing {', '.join(err.args[0])}",
            path=tf.path,
            fix=perceiver.FIX,
        ) from err
    expected = _expected_shapes(lambda: perceiver.PerceiverResampler(config))
    compare_shapes(expected, plan, tf.path, f"Perceiver resampler ({plan.layout} layout)")
    return plan, config


_FIX = "The file is damaged or of a layout llmcond does not read; get the adapter from its original release"


def compare_shapes(expected: Mapping[str, tuple[int, ...]], plan: KeyPlan, path: Path, what: str) -> None:
    missing = sorted(set(expected) - set(plan.shapes))
    unexpected = sorted(set(plan.shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(plan.shapes) if tuple(expected[k]) != plan.shapes[k])
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"missing keys {_list(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_list([_origin(plan, k) for k in unexpected])}")
    if wrong:
        shapes = [f"{_origin(plan, k)} {list(plan.shapes[k])} (expected {list(expected[k])})" for k in wrong]
        parts.append(f"wrong shapes {_list(shapes)}")
    raise ModelFileError(f"does not match {what}: " + "; ".join(parts), path=path, fix=_FIX)


def _origin(plan: KeyPlan, key: str) -> str:
    sources = plan.sources.get(key, [key])
    return key if sources == [key] else f"{key} (from {'+'.join(sources)})"


def _list(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _sample(shapes: Mapping[str, tuple[int, ...]], limit: int = 12) -> str:
    return _list([f"{k} {list(v)}" for k, v in sorted(shapes.items())], limit)


def _meta_build(factory):
    with meta_skeleton():
        return factory()


def _expected_shapes(factory) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in _meta_build(factory).state_dict().items()}


_HAS_ASSIGN = "assign" in inspect.signature(torch.nn.Module.load_state_dict).parameters


def _build(factory) -> Adapter:
    """Skip random initialisation: on torch >= 2.1 the module is made on the meta device and the loaded
    tensors are assigned to it."""
    return _meta_build(factory) if _HAS_ASSIGN else factory()


def _load_strict(module: Adapter, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        if _HAS_ASSIGN:
            module.load_state_dict(state, strict=True, assign=True)
        else:
            module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelFileError(f"does not load strictly: {err}", path=path, fix=_FIX) from err


def _info(tf: TensorFile, family: str, plan: KeyPlan, c) -> AdapterInfo:
    params = sum(_numel(s) for s in tf.shapes.values())
    if family == "llm_to_sdxl":
        return AdapterInfo(
            tf.path, family, plan.layout, c.llm_dim, c.max_input_len, c.output_len, c.dim, c.pooled_dim,
            {"wide": c.n_wide, "narrow": c.n_narrow}, params, tf.dtype, len(tf.shapes),
        )  # fmt: skip
    return AdapterInfo(
        tf.path, family, plan.layout, c.llm_dim, c.max_input_len, c.num_latents, c.dim, c.pooled_dim,
        {"layers": c.depth}, params, tf.dtype, len(tf.shapes),
    )  # fmt: skip


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
