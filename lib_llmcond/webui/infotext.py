"""Infotext: one table from option to label, written into ``p.extra_generation_params`` and read back on paste.

Pasting an infotext without our keys turns the extension off (the enable box reads "is our LLM key there").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lib_llmcond.webui import args as A
from lib_llmcond.webui.state import RequestState

LLM = "llmcond LLM"
ADAPTER = "llmcond adapter"
TOKENS = "llmcond tokens"
FALLBACK = "llmcond fallback"
ADAPTER_LORAS = "llmcond adapter loras"  # merged into the adapter: "name: multiplier, ..."
IGNORED_LORAS = "llmcond adapter loras ignored"  # "name: reason; ..."


def _with_hash(name: str, short_hash: str) -> str:
    return f"{name} [{short_hash}]" if short_hash else name


def _name_of(value: str) -> str:
    """``"gemma-3-1b [0123abcd45]"`` -> ``"gemma-3-1b"``."""
    value = str(value)
    if value.endswith("]") and " [" in value:
        return value.rpartition(" [")[0]
    return value


@dataclass(frozen=True)
class Entry:
    arg: str  # name in args.FIELDS
    label: str  # infotext key
    write: Callable[[RequestState, Any], str | None]  # None: not written (default value)
    read: Callable[[str], Any]


def _unless_default(arg: str) -> Callable[[RequestState, Any], str | None]:
    def write(state: RequestState, args: Any) -> str | None:
        value = getattr(args, arg)
        return None if value == A.DEFAULTS[arg] else str(value)

    return write


def _bool(text: str) -> bool:
    return str(text).strip().lower() in ("true", "on", "1", "yes")


TABLE: tuple[Entry, ...] = (
    Entry("llm", LLM, lambda s, a: _with_hash(s.llm_name, s.llm_hash), _name_of),
    Entry("adapter", ADAPTER, lambda s, a: _with_hash(s.adapter_name, s.adapter_hash), _name_of),
    Entry("emphasis", "llmcond emphasis", lambda s, a: a.emphasis, str),
    Entry("system_prompt", "llmcond system prompt", _unless_default("system_prompt"), str),
    Entry("empty_negative", "llmcond empty negative", _unless_default("empty_negative"), str),
    Entry("break_mode", "llmcond break", _unless_default("break_mode"), str),
    Entry("chunk", "llmcond chunk", lambda s, a: "on" if a.chunk else None, _bool),
    Entry("dtype", "llmcond dtype", _unless_default("dtype"), str),
    Entry("emphasis_syntax", "llmcond emphasis syntax", _unless_default("emphasis_syntax"), str),
    Entry("emphasis_mapping", "llmcond emphasis mapping", _unless_default("emphasis_mapping"), str),
    Entry("adapter_precision", "llmcond adapter precision", _unless_default("adapter_precision"), str),
)
LABELS = tuple(e.label for e in TABLE)


def write(p: Any, state: RequestState, args: Any) -> None:
    params = p.extra_generation_params
    for e in TABLE:
        value = e.write(state, args)
        if value is not None:
            params[e.label] = value


def write_results(p: Any, state: RequestState) -> None:
    """After encoding: the token/cut report of the prompts and the fallback, if it happened."""
    params = p.extra_generation_params
    with state.log.lock:
        reports = list(state.log.reports)
    if reports:
        worst = max(reports, key=lambda r: (getattr(r, "cut", None) is not None, r.chunks, r.tokens))
        params[TOKENS] = worst.describe()
    if state.log.fallback:
        params[FALLBACK] = f"CLIP used: {state.log.fallback}"
    with state.log.lock:
        applied, ignored = dict(state.log.loras_applied), dict(state.log.loras_ignored)
    if applied:
        params[ADAPTER_LORAS] = ", ".join(f"{name}: {m:g}" for name, m in applied.items())
    if ignored:
        params[IGNORED_LORAS] = "; ".join(f"{name}: {reason}" for name, reason in ignored.items())


def enabled_from(params: dict) -> bool:
    return LLM in params


def paste_fields(components: dict[str, Any], enabled: Any) -> list[tuple[Any, Any]]:
    """``Script.infotext_fields``: (component, label or function of the parsed infotext)."""
    fields: list[tuple[Any, Any]] = [(enabled, enabled_from)]
    for e in TABLE:
        if e.arg in components:
            fields.append((components[e.arg], _reader(e)))
    return fields


def _reader(e: Entry) -> Callable[[dict], Any]:
    def read(params: dict) -> Any:
        if e.label in params:
            return e.read(params[e.label])
        return A.DEFAULTS[e.arg] if LLM in params else None  # ours but default: reset; not ours: leave

    return read
