"""Per-request state: which processing object (``p``) uses llmcond with which options.

The state is attached to ``p`` by the script's ``process`` hook. The host's ``cached_params(p, ...)`` runs right
before every cond computation, in the same thread; our wrapper of it *activates* ``p``'s state (or None) in a
thread-local slot that the model hook reads. So batches, hires passes, nested passes (ADetailer runs its own
``p``) and concurrent API requests (one thread each) each see their own state, and a ``p`` without our state
always gets the host's own conds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

ATTR = "_llmcond_state"
_local = threading.local()


@dataclass
class RequestLog:
    """What happened while encoding one request (for the infotext and the console)."""

    reports: list[Any] = field(default_factory=list)  # PromptReport per encoded positive text
    fallback: str | None = None  # the error that made us fall back to CLIP, if we did
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # adapter LoRAs (webui/loras.py): file -> the host's name, name -> multiplier merged, name -> why ignored
    lora_names: dict[str, str] = field(default_factory=dict)
    loras_applied: dict[str, float] = field(default_factory=dict)
    loras_ignored: dict[str, str] = field(default_factory=dict)

    def add_reports(self, reports: list[Any]) -> None:
        with self.lock:
            self.reports.extend(r for r in reports if r not in self.reports)

    def remember_lora(self, path: str, name: str) -> None:
        with self.lock:
            self.lora_names[path] = name

    def lora_name(self, path: str) -> str | None:
        with self.lock:
            return self.lora_names.get(path)

    def apply_lora(self, name: str, multiplier: float) -> None:
        with self.lock:
            self.loras_applied[name] = multiplier

    def note_lora(self, name: str, reason: str) -> bool:
        """Record why ``name`` is not applied to the adapter; False if that was known already."""
        with self.lock:
            new = self.loras_ignored.get(name) != reason
            self.loras_ignored[name] = reason
            return new


@dataclass(frozen=True)
class RequestState:
    opts: Any  # lib_llmcond.engine.EncodeOptions
    signature: str  # engine.signature(opts): part of the host's cond-cache key
    llm_name: str
    adapter_name: str
    llm_hash: str
    adapter_hash: str
    system_preset: str = "Default"
    emphasis_choice: str = "Follow WebUI"
    allow_fallback: bool = False
    error: Exception | None = None  # why this request cannot be encoded (bad model...): raised at encode time
    log: RequestLog = field(default_factory=RequestLog, compare=False)


def attach(p: Any, state: RequestState | None) -> None:
    setattr(p, ATTR, state)


def of(p: Any) -> RequestState | None:
    state = getattr(p, ATTR, None)
    return state if isinstance(state, RequestState) else None


def activate(state: RequestState | None) -> None:
    _local.state = state


def active() -> RequestState | None:
    return getattr(_local, "state", None)


def deactivate_if(state: RequestState | None) -> None:
    """Deactivate ``state`` or a state derived from it for one pass (same log: webui/loras.py)."""
    current = active()
    if current is state or (current is not None and state is not None and current.log is state.log):
        _local.state = None
