"""Where a module's weights sit, as a token: a CUDA graph reads the weights at the addresses they had at capture,
so it is replayed only while the token it was captured with is current.

A token changes whenever the weights may have changed address: ``Module.to`` and its relatives (through
:class:`TracksMoves`), a :class:`~lib_llmcond.residency.Residency` move. Tokens come from one increasing counter
and are held beside the module (weakly), not in it: a copy of a module, or a new module that reuses a freed one's
``id()``, never inherits a token. Reading a token costs a dictionary look-up, where comparing every weight's
address cost 0.7 ms per encode for the gemma-3-1b shape.
"""

from __future__ import annotations

import itertools
import threading
import weakref

from torch import nn

_counter = itertools.count(1)
_tokens: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def token(module: nn.Module) -> int:
    """The current placement token of ``module`` (a fresh one the first time it is asked)."""
    with _lock:
        t = _tokens.get(module)
        if t is None:
            t = _tokens[module] = next(_counter)
        return t


def moved(module: nn.Module) -> None:
    """Record that ``module``'s weights may have changed address."""
    with _lock:
        _tokens[module] = next(_counter)


class TracksMoves(nn.Module):
    """A module whose ``to``/``cuda``/``float``/... (all through ``_apply``) renew its placement token."""

    def _apply(self, *args, **kwargs):
        out = super()._apply(*args, **kwargs)
        moved(self)
        return out
