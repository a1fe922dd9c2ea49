"""The loaded models: an LRU sized in bytes, their placement per memory policy, and the host asked for VRAM
only when a load or a move onto the device needs it.

Policies (``EncodeOptions.memory``):

| policy | on the device between calls | host copy | after a call |
|---|---|---|---|
| ``keep`` | yes | none | nothing |
| ``offload`` | no | pinned, made once at load | device tensors dropped (no copy back) |
| ``unload`` | no | none | the LLM and the adapter freed |
| ``auto`` | decided at load: ``keep`` if the weights fit beside the host's needs, else ``offload``; always ``offload`` when the host runs in a low-VRAM mode | | |

Budgets: on a CUDA device, free memory (``devices.free_bytes``) minus what the host keeps for itself
(``HostMemory.reserve``) and ``WORKSPACE`` for our activations; our least recently used models leave the
device first, and the host is asked (``HostMemory.make_room``) only for what our own evictions could not
free. In host RAM, our least recently used models are freed while available memory is under ``RAM_MARGIN``.
The models of the call in progress are never evicted.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from lib_llmcond import devices
from lib_llmcond.residency import CPU, Residency, module_bytes

POLICIES = ("auto", "keep", "offload", "unload")
WORKSPACE = 512 << 20  # activations of one encode, kept free beside the weights
RAM_MARGIN = 2 << 30  # host memory left to everything else when we keep models on the CPU


class HostMemory(Protocol):
    """What the engine asks of the program it runs in (a WebUI's memory manager, or nothing)."""

    def make_room(self, nbytes: int, device: torch.device) -> None:
        """Have ``nbytes`` free on ``device`` if the host can (move its own models away)."""

    def reserve(self, device: torch.device) -> int:
        """Bytes the host needs free on ``device`` for its own models and inference."""

    def low_vram(self) -> bool:
        """The host runs in a low-VRAM mode (then ``auto`` offloads)."""


class Standalone:
    """No host: nothing to move away, nothing reserved."""

    def make_room(self, nbytes: int, device: torch.device) -> None:
        devices.empty_cache(device)

    def reserve(self, device: torch.device) -> int:
        return 0

    def low_vram(self) -> bool:
        return False


@dataclass(eq=False)
class Entry:
    key: Hashable
    path: str  # the file or folder
    version: Hashable  # its identity: a new version of the same path replaces every older one
    model: Any  # an LLM or an adapter
    module: nn.Module
    nbytes: int
    device: torch.device  # where it computes
    policy: str  # "keep" | "offload" | "unload" (auto resolved at load)
    residency: Residency | None  # None on the CPU: nothing ever moves
    on_move: Callable[[torch.device], None] | None = None

    @property
    def on_device(self) -> bool:
        return self.residency is None or self.residency.device == self.device

    @property
    def host_bytes(self) -> int:
        if self.residency is None:
            return self.nbytes
        return self.nbytes if self.residency.has_host_copy else 0


class Registry:
    def __init__(self, host: HostMemory | None = None) -> None:
        self.host: HostMemory = host or Standalone()
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self._lock = threading.RLock()

    # -- queries ---------------------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """Least recently used first."""
        with self._lock:
            return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    # -- the call's models -------------------------------------------------------------------------------
    def acquire(
        self,
        key: Hashable,
        path: str,
        load: Callable[[], Any],
        *,
        version: Hashable = None,
        module_of: Callable[[Any], nn.Module],
        device: torch.device,
        policy: str,
        in_use: Iterable[Hashable] = (),
        on_move: Callable[[Any, torch.device], None] | None = None,
    ) -> Any:
        """The model for ``key`` on ``device``, loaded on the CPU by ``load`` if missing."""
        busy = {key, *in_use}
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and policy != "auto" and entry.policy != _policy_on(device, policy):
                self._drop(lambda e: e is entry)  # the setting changed: placed anew under the new policy
                entry = None
            if entry is None:
                self._drop(lambda e: e.path == path and e.version != version)  # replaced on disk: stale
                entry = self._load(key, (path, version), load, module_of, device, policy, busy, on_move)
            self._entries.move_to_end(key)
            self._to_device(entry, busy)
            return entry.model

    def release(self, keys: Iterable[Hashable], policy: str) -> None:
        """After a call: offloaded models leave the device; ``unload`` frees the call's models."""
        with self._lock:
            entries = [self._entries[k] for k in keys if k in self._entries]
            if policy == "unload":
                self._drop(lambda e: e in entries)
                return
            for e in entries:
                if e.policy == "offload" and e.residency is not None:
                    self._move(e, CPU)

    def clear(self) -> None:
        with self._lock:
            self._drop(lambda e: True)

    # -- loading and placement ---------------------------------------------------------------------------
    def _load(self, key, source, load, module_of, device, policy, busy, on_move) -> Entry:
        model = load()
        module = module_of(model)
        nbytes = module_bytes(module)
        move = None if on_move is None else (lambda d, m=model: on_move(m, d))
        if device == CPU:
            entry = Entry(key, *source, model, module, nbytes, device, _policy_on(device, policy), None, move)
        else:
            resolved = self._decide(policy, nbytes, device, busy)
            residency = Residency(module, host_copy=resolved == "offload")
            entry = Entry(key, *source, model, module, nbytes, device, resolved, residency, move)
        self._entries[key] = entry
        self._trim_ram(busy)
        return entry

    def _decide(self, policy: str, nbytes: int, device: torch.device, busy: set) -> str:
        if policy != "auto":
            return policy
        if self.host.low_vram():
            return "offload"
        free = devices.free_bytes(device)
        if free is None:
            return "keep"
        ours = sum(e.nbytes for e in self._evictable_on(device, busy))
        return "keep" if nbytes + self._headroom(device) <= free + ours else "offload"

    def _headroom(self, device: torch.device) -> int:
        return self.host.reserve(device) + WORKSPACE

    def _to_device(self, entry: Entry, busy: set) -> None:
        if entry.on_device:
            return  # resident (or a cache hit on a resident model): the host is never asked
        device = entry.device
        for key in [e.key for e in self._evictable_on(device, busy)]:  # our least recently used leave first
            free = devices.free_bytes(device)  # (no reference to an evicted entry may outlive its eviction)
            if free is None or free - entry.nbytes >= self._headroom(device):
                break
            self._evict(self._entries[key])
        free = devices.free_bytes(device)
        if free is not None and free < entry.nbytes:
            self.host.make_room(entry.nbytes, device)
        self._move(entry, device)

    def _move(self, entry: Entry, device: torch.device) -> None:
        entry.residency.to(device)  # type: ignore[union-attr]
        if entry.on_move is not None:
            entry.on_move(device)

    def _evictable_on(self, device: torch.device, busy: set) -> list[Entry]:
        return [e for e in self._entries.values() if e.key not in busy and e.device == device and e.on_device]

    def _evict(self, entry: Entry) -> None:
        """Off the device: back to the host copy if there is one, else freed."""
        if entry.residency is not None and entry.residency.has_host_copy:
            self._move(entry, CPU)
        else:
            self._drop(lambda e: e is entry)

    def _trim_ram(self, busy: set) -> None:
        for key in [e.key for e in self._entries.values() if e.key not in busy and e.host_bytes]:
            available = devices.available_ram()
            if available is None or available >= RAM_MARGIN:
                return
            self._drop(lambda e, victim=key: e.key == victim)

    def _drop(self, which: Callable[[Entry], bool]) -> None:
        victims = [e for e in self._entries.values() if which(e)]
        for e in victims:
            del self._entries[e.key]
        for device in {e.device for e in victims if e.device != CPU}:
            devices.empty_cache(device)


def _policy_on(device: torch.device, policy: str) -> str:
    """On the CPU nothing moves: every policy but ``unload`` keeps the model."""
    if device != CPU:
        return policy
    return "unload" if policy == "unload" else "keep"
