"""Prompt templates for the UI, through ``lib_llmcond.prompt.templates`` when it is installed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _module() -> Any | None:
    try:
        from lib_llmcond.prompt import templates
    except ImportError:
        return None
    return templates if hasattr(templates, "list_templates") else None


def names(folders: Sequence[str | Path] = ()) -> list[str]:
    mod = _module()
    if mod is None:
        return []
    return [str(getattr(t, "name", t)) for t in mod.list_templates(list(folders))]


def text(name: str, folders: Sequence[str | Path] = ()) -> str:
    """The template's prompt text; LlmcondError-style KeyError for an unknown name."""
    if name not in names(folders):
        raise KeyError(name)
    t = _module().get_template(name)  # type: ignore[union-attr]
    for attr in ("text", "body", "content"):
        value = getattr(t, attr, None)
        if isinstance(value, str):
            return value
    return str(t)
