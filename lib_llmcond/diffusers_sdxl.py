"""Conditioning for diffusers' SDXL pipelines (``StableDiffusionXLPipeline`` and its img2img/inpaint siblings).

:func:`sdxl_prompt_embeds` returns the four tensors those pipelines take instead of running their CLIP
encoders: ``prompt_embeds`` [B, T, 2048], ``pooled_prompt_embeds`` [B, 1280], ``negative_prompt_embeds`` and
``negative_pooled_prompt_embeds``, so ``pipe(**embeds, ...)`` works. Emphasis, BREAK and chunking follow the
:class:`~lib_llmcond.engine.EncodeOptions` given, exactly as the WebUI path encodes them.

What diffusers computes itself: the size/crop conditioning. The pipeline builds
``add_time_ids = original_size + crops_coords_top_left + target_size`` (defaults: ``(height, width)``,
``(0, 0)``, ``(height, width)``) and the UNet embeds each of the six values with its ``add_time_proj``
(256 sinusoidal features, cos half first) before ``add_embedding``. ``pooled ‖ add_time_proj(add_time_ids)``
is exactly our 2816-d ``vector`` (``lib_llmcond.conditioning.make_vector``), so nothing size-related is
returned here; ``EncodeOptions.fixed_size`` corresponds to passing ``original_size=target_size=(1024, 1024)``.

diffusers is not imported: a pipeline object is only read for its device and dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import torch

from lib_llmcond.conditioning import POOLED_DIM, pad_blocks
from lib_llmcond.engine import EncodeOptions, Engine

_ENGINE: Engine | None = None


class SDXLPromptEmbeds(TypedDict):
    """The keyword arguments diffusers' SDXL pipelines take in place of ``prompt``/``negative_prompt``."""

    prompt_embeds: torch.Tensor  # [B * n, T, 2048]
    pooled_prompt_embeds: torch.Tensor  # [B * n, 1280]
    negative_prompt_embeds: torch.Tensor  # [B * n, T, 2048] (same T as prompt_embeds)
    negative_pooled_prompt_embeds: torch.Tensor  # [B * n, 1280]


def default_engine() -> Engine:
    """One process-wide :class:`Engine`, so repeated calls reuse the loaded models and the text cache."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Engine()
    return _ENGINE


def sdxl_prompt_embeds(
    options: EncodeOptions,
    prompt: str | Sequence[str],
    negative_prompt: str | Sequence[str] | None = None,
    *,
    pipe: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    num_images_per_prompt: int = 1,
    engine: Engine | None = None,
) -> SDXLPromptEmbeds:
    """Encode prompts and negatives for a diffusers SDXL pipeline.

    ``negative_prompt``: one text for every prompt, one per prompt, or None (= ""; an empty negative is encoded
    or zeroed as ``options.empty_negative`` says). Cond and uncond come out with the same token length: the
    shorter side is padded with the empty prompt's 308-token block, as the WebUIs pad. ``pipe`` (a diffusers
    pipeline) gives the device and dtype; ``device``/``dtype`` override it; without either, CPU and fp32.
    Rows are repeated ``num_images_per_prompt`` times each, in diffusers' order.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    negatives = _negatives(negative_prompt, len(prompts))
    if num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be at least 1, not {num_images_per_prompt}")
    engine = engine or default_engine()
    # the size arguments only shape the vector's size part, which diffusers computes itself
    cond = engine.get_conditioning(prompts, options, width=1024, height=1024)
    uncond = engine.get_conditioning(negatives, options, width=1024, height=1024, is_negative=True)
    crossattn, negative = _equal_length(engine, options, cond["crossattn"], uncond["crossattn"])
    target_device, target_dtype = _target(pipe, device, dtype)

    def out(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(num_images_per_prompt, dim=0).to(device=target_device, dtype=target_dtype)

    return SDXLPromptEmbeds(
        prompt_embeds=out(crossattn),
        pooled_prompt_embeds=out(cond["vector"][:, :POOLED_DIM]),
        negative_prompt_embeds=out(negative),
        negative_pooled_prompt_embeds=out(uncond["vector"][:, :POOLED_DIM]),
    )


def _negatives(negative_prompt: str | Sequence[str] | None, n: int) -> list[str]:
    if negative_prompt is None:
        return [""] * n
    if isinstance(negative_prompt, str):
        return [negative_prompt] * n
    negatives = list(negative_prompt)
    if len(negatives) != n:
        raise ValueError(
            f"negative_prompt has {len(negatives)} texts for {n} prompts: give one per prompt, or one text for all"
        )
    return negatives


def _equal_length(
    engine: Engine, options: EncodeOptions, cond: torch.Tensor, uncond: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the shorter of cond/uncond [B, T, D] with the empty prompt's block (BREAK blocks, chunks)."""
    if cond.shape[1] == uncond.shape[1]:
        return cond, uncond
    filler = engine.encode_texts([""], options)[0].crossattn
    both = pad_blocks([*cond, *uncond], filler)
    return both[: cond.shape[0]], both[cond.shape[0] :]


def _target(pipe: Any, device: str | torch.device | None, dtype: torch.dtype | None):
    """The device and dtype the pipeline's UNet computes in (as its own ``encode_prompt`` without CLIP)."""
    if pipe is not None:
        device = pipe._execution_device if device is None else device  # where offloaded pipelines compute
        dtype = pipe.unet.dtype if dtype is None else dtype
    return torch.device(device or "cpu"), dtype or torch.float32
