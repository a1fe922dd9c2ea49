"""One ``SdConditioning`` batch -> the host's SDXL conditioning dict, through the engine."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from lib_llmcond.errors import LlmcondError
from lib_llmcond.progress import Interrupted
from lib_llmcond.webui import hosts, loras, prefetch, recall
from lib_llmcond.webui.host_progress import during_encode
from lib_llmcond.webui.precision import outside_host_autocast
from lib_llmcond.webui.state import RequestState

log = logging.getLogger("llmcond")
DEFAULT_SIZE = 1024  # what the hosts use when a batch carries no size


def encode_batch(
    batch: Any,
    state: RequestState,
    *,
    engine: Any,
    model: Any,
    original: Callable[[Any], Any],
    host: str,
    host_opts: Any = None,
) -> Any:
    """Conds for ``batch`` from the LLM, or the host's own (``original``) when falling back to CLIP is allowed."""
    try:
        if state.error is not None:
            raise state.error
        return _encode(batch, state, engine=engine, model=model, host=host, host_opts=host_opts)
    except Interrupted as e:  # the host's Interrupt button: stop, never fall back
        log.warning("llmcond: %s", e)
        raise
    except LlmcondError as e:
        if not state.allow_fallback:
            log.error("llmcond: %s", e)
            raise
        if state.log.fallback is None:  # one line per request, not per batch
            log.warning("llmcond: falling back to CLIP for this generation: %s", e)
        state.log.fallback = str(e)
        recall.keep([], state.log.fallback)
        return original(batch)


def _encode(batch: Any, state: RequestState, *, engine: Any, model: Any, host: str, host_opts: Any) -> dict:
    width = int(getattr(batch, "width", DEFAULT_SIZE) or DEFAULT_SIZE)
    height = int(getattr(batch, "height", DEFAULT_SIZE) or DEFAULT_SIZE)
    negative = bool(getattr(batch, "is_negative_prompt", False))
    top, left = hosts.crop(host_opts, host)
    target = hosts.model_device(model)  # VRAM is asked of the host by the engine, only when a load needs it
    reports: list[Any] = []
    extra = prefetch.take() if negative else []
    more = (
        {"prefetch": [t for t in extra if t not in batch]}
        if extra and prefetch.accepts_prefetch(engine)
        else {}
    )
    with outside_host_autocast(), during_encode() as progress:
        cond = engine.get_conditioning(
            list(batch),
            state.opts,
            width=width,
            height=height,
            crop_top=top,
            crop_left=left,
            is_negative=negative,
            reports=reports,
            progress=progress,
            **more,
        )
    if state.opts.adapter_loras:
        loras.record_results(state, engine.adapter_lora_results(state.opts))
    recall.keep([] if negative else reports)
    if not negative:
        state.log.add_reports(reports)
        for r in reports:
            if getattr(r, "cut", None) is not None:
                log.warning("llmcond: prompt cut: %s", r.describe())
    return {k: v.to(target, torch.float32) for k, v in cond.items()}
