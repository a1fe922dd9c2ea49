"""The Settings section: one table of options, read into a ``Settings`` value; model folders from every source."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECTION = ("llmcond", "LLM text encoder (llmcond)")
MEMORY_CHOICES = ("auto", "offload", "keep", "unload")  # lib_llmcond/registry.py POLICIES


@dataclass(frozen=True)
class Option:
    key: str
    default: Any
    label: str
    kind: str = "text"  # "text" | "number" | "checkbox" | "radio"
    choices: tuple[str, ...] = ()


OPTIONS: tuple[Option, ...] = (
    Option("llmcond_llm_folders", "", "Extra LLM folders (one per line or comma-separated)"),
    Option("llmcond_adapter_folders", "", "Extra adapter folders (one per line or comma-separated)"),
    Option("llmcond_cache_size", 64, "Encoded prompts kept in memory (LRU)", "number"),
    Option(
        "llmcond_memory",
        "auto",
        "Between generations, the LLM and adapter are (auto: kept on the GPU while it has room beside the "
        "WebUI's own models, else offloaded)",
        "radio",
        MEMORY_CHOICES,
    ),
    Option(
        "llmcond_fallback",
        False,
        "If the LLM cannot be used, fall back to CLIP (noted in the infotext) instead of stopping the generation",
        "checkbox",
    ),
    Option(
        "llmcond_fixed_size", False, "Size conditioning fixed at 1024x1024 (reference workflow)", "checkbox"
    ),
)


@dataclass(frozen=True)
class Settings:
    llm_folders: tuple[Path, ...]
    adapter_folders: tuple[Path, ...]
    cache_size: int = 64
    memory: str = "auto"
    fallback: bool = False
    fixed_size: bool = False


def split_folders(text: str | Iterable[str] | None) -> list[str]:
    if not text:
        return []
    items = text.replace(",", "\n").splitlines() if isinstance(text, str) else list(text)
    return [s.strip() for s in items if s and s.strip()]


def _get(opts: Any, key: str, default: Any) -> Any:
    value = getattr(opts, key, None) if opts is not None else None
    return default if value is None else value


def read(opts: Any, models_root: str | Path, cmd_opts: Any = None) -> Settings:
    """Settings from the host's ``shared.opts``, its models folder and ``preload.py`` flags."""
    from lib_llmcond.models import default_folders

    flags_llm = split_folders(getattr(cmd_opts, "llmcond_llm_dir", None) or [])
    flags_adapter = split_folders(getattr(cmd_opts, "llmcond_adapter_dir", None) or [])
    llm = default_folders(
        models_root, "llm", [*flags_llm, *split_folders(_get(opts, "llmcond_llm_folders", ""))]
    )
    adapter = default_folders(
        models_root, "adapter", [*flags_adapter, *split_folders(_get(opts, "llmcond_adapter_folders", ""))]
    )
    memory = str(_get(opts, "llmcond_memory", "auto"))
    try:
        cache = max(0, int(_get(opts, "llmcond_cache_size", 64)))
    except (TypeError, ValueError):
        cache = 64
    return Settings(
        llm_folders=tuple(llm),
        adapter_folders=tuple(adapter),
        cache_size=cache,
        memory=memory if memory in MEMORY_CHOICES else "auto",
        fallback=bool(_get(opts, "llmcond_fallback", False)),
        fixed_size=bool(_get(opts, "llmcond_fixed_size", False)),
    )


def host_models_root() -> str:
    """``--models-dir`` or ``<webui>/models`` on every host."""
    from lib_llmcond.webui.hosts import host_module

    paths = host_module("modules.paths")
    root = getattr(paths, "models_path", None) if paths else None
    return str(root or os.path.join(os.getcwd(), "models"))


def register(shared: Any, section: tuple[str, str] = SECTION) -> None:
    """Add the options to the host's Settings page (``on_ui_settings``)."""
    import gradio as gr

    components = {"number": gr.Number, "checkbox": gr.Checkbox, "radio": gr.Radio, "text": gr.Textbox}
    for o in OPTIONS:
        extra = {"choices": list(o.choices)} if o.choices else {}
        info = shared.OptionInfo(o.default, o.label, components[o.kind], extra, section=section)
        shared.opts.add_option(o.key, info)
