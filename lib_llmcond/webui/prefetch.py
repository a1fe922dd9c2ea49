"""Cond and uncond of one step in one LLM batch.

The hosts compute the negative conds first, then the positive ones, in two calls. When our cache-key wrapper
sees the negative prompts of a pass of ``p``, it works out (with the host's own ``prompt_parser``) exactly which
texts the positive call of that pass will ask for, and the hook hands them to the engine as ``prefetch`` with
the negative batch: one forward pass, and the positive call is answered from the engine's cache.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

from lib_llmcond.webui.hosts import host_module

_local = threading.local()


def _positives_for(p: Any, negatives: list[str]) -> list[str] | None:
    for neg_attr, pos_attr in (("negative_prompts", "prompts"), ("hr_negative_prompts", "hr_prompts")):
        neg, pos = getattr(p, neg_attr, None), getattr(p, pos_attr, None)
        if isinstance(neg, list) and isinstance(pos, list) and list(neg) == negatives:
            return list(pos)
    return None


def plan(
    p: Any, required_prompts: Any, steps: int, hires_steps: Any = None, use_old: bool = False
) -> list[str]:
    """The texts the positive call of this pass will encode (empty when unsure)."""
    if not getattr(required_prompts, "is_negative_prompt", False):
        return []
    positives = _positives_for(p, list(required_prompts))
    parser = host_module("modules.prompt_parser")
    if not positives or parser is None:
        return []
    try:
        _, flat, _ = parser.get_multicond_prompt_list(positives)
        schedules = parser.get_learned_conditioning_prompt_schedules(flat, steps, hires_steps, use_old)
    except Exception:  # a host whose parser differs: no prefetch, nothing else changes
        return []
    return list(dict.fromkeys(text for schedule in schedules for _, text in schedule))


def remember(texts: list[str]) -> None:
    _local.texts = texts


def take() -> list[str]:
    texts = getattr(_local, "texts", [])
    _local.texts = []
    return texts


def accepts_prefetch(engine: Any) -> bool:
    try:
        return "prefetch" in inspect.signature(engine.get_conditioning).parameters
    except (TypeError, ValueError):
        return False
