"""The library's progress context filled from the host's state (A1111 1.10 / Forge ``modules.shared_state``).

What the encode says goes to ``shared.state.textinfo`` (the progress text under the preview) for as long as the
encode runs, and its slow steps (loading a model and its tokenizer) to the console as well. The host's Interrupt
button (``state.interrupted``) stops an encode between rows or chunks; "Stop generating"
(``state.stopping_generation``) lets the current image finish, so it does not stop an encode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from lib_llmcond.progress import Progress
from lib_llmcond.webui.hosts import host_module

PREFIX = "llmcond: "


def _state() -> Any:
    shared = host_module("modules.shared")
    return getattr(shared, "state", None) if shared is not None else None


@contextlib.contextmanager
def during_encode() -> Iterator[Progress]:
    """A progress context for one encode; the host's progress text is put back afterwards."""
    state = _state()
    before = getattr(state, "textinfo", None)

    def show(text: str, console: bool) -> None:
        if state is not None:
            state.textinfo = PREFIX + text
        if console:
            print(PREFIX + text, flush=True)

    def should_stop() -> bool:
        return bool(getattr(state, "interrupted", False))

    try:
        yield Progress(show=show, should_stop=should_stop)
    finally:
        if state is not None and str(getattr(state, "textinfo", "") or "").startswith(PREFIX):
            state.textinfo = before
