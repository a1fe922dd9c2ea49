"""What an encode reported, kept with the host's cond-cache key, so a cache hit writes the same infotext.

A1111 (and Forge) keep the last conds in class-level caches across generations: when only the seed (or anything
outside ``cached_params``) changes, ``get_conds_with_caching`` returns the cached conds and our model hook is
never called. The cache-key wrapper (``hook.cached_params``) names the key of every cond computation here before
the host looks it up; the encode keeps its token reports and any CLIP-fallback note under that key, and a later
request with an equal key gets them back, whether or not the host then answers from its cache. Keys are compared
with ``==``, as the host compares them (they hold lists, so they cannot be hashed).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from lib_llmcond.webui.state import RequestState

KEEP = 16  # entries: the hosts hold at most 4 cond caches (c, uc, hires c, hires uc)
_local = threading.local()
_lock = threading.Lock()


@dataclass
class Kept:
    key: Any
    reports: list = field(default_factory=list)
    fallback: str | None = None


_kept: list[Kept] = []


def _find(key: Any) -> Kept | None:
    for entry in _kept:
        try:
            if entry.key == key:
                return entry
        except Exception:  # a key part whose == fails: treat as different, as a cache miss
            continue
    return None


def expect(key: Any, current: RequestState) -> None:
    """Called with the key of the cond computation about to happen: the request gets what was kept for it."""
    _local.key = key
    with _lock:
        entry = _find(key)
        reports, fallback = (list(entry.reports), entry.fallback) if entry else ([], None)
    current.log.add_reports(reports)
    if fallback is not None:
        current.log.fallback = fallback


def keep(reports: list, fallback: str | None = None) -> None:
    """Called by an encode (or its CLIP fallback): keep what it reported under the expected key."""
    key = getattr(_local, "key", None)
    if key is None:
        return
    with _lock:
        entry = _find(key)
        if entry is None:
            entry = Kept(key)
            _kept.append(entry)
            del _kept[:-KEEP]
        entry.reports = list(reports)
        entry.fallback = fallback


def forget() -> None:
    with _lock:
        _kept.clear()
    _local.key = None
