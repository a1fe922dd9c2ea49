"""The accordion's info line: what the chosen LLM and adapter are and whether they fit together."""

from __future__ import annotations

import json
from pathlib import Path

from lib_llmcond.errors import LlmcondError


def _llm_hidden_size(path: Path) -> int | None:
    """From an HF directory's config.json (Gemma-3, Qwen3 at the top, T5Gemma under ``encoder``)."""
    config = path / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for section in (data, data.get("text_config") or {}, data.get("encoder") or {}):
        if isinstance(section, dict) and isinstance(section.get("hidden_size"), int):
            return section["hidden_size"]
    return None


def describe(llm_path: Path, adapter_path: Path) -> str:
    try:
        from lib_llmcond.models import describe_pair  # the library's own description, when it has one
    except ImportError:
        describe_pair = None
    if describe_pair is not None:
        ok, text = describe_pair(llm_path, adapter_path)
        return ("OK: " if ok else "Does not fit: ") + text
    from lib_llmcond.adapters.loader import check_pair, inspect_adapter

    try:
        a = inspect_adapter(adapter_path)
    except LlmcondError as e:
        return f"Adapter problem: {e}"
    adapter = f"adapter {adapter_path.name}: {a.family}, takes {a.llm_dim}-d states, {a.output_tokens} tokens"
    hidden = _llm_hidden_size(llm_path) if llm_path.is_dir() else None
    if hidden is None:
        return f"LLM {llm_path.name}; {adapter}"
    reason = check_pair(hidden, a)
    llm = f"LLM {llm_path.name}: {hidden}-d"
    return f"Does not fit: {reason}" if reason else f"OK: {llm}; {adapter}"
