"""A fake CUDA card for CPU-only tests of model placement (``lib_llmcond.devices`` replaced).

Uploads land on the ``meta`` device (no memory, but their bytes are known), so "what is on the card" is read
from the modules themselves: the bytes of every meta tensor held by a live module the card tracks, plus the
bytes other programs (the host's UNet...) hold. Nothing is taken from the registry's own bookkeeping.
"""

from __future__ import annotations

import gc
import weakref

import torch
from torch import nn

from lib_llmcond import devices, residency


def device_bytes(module: nn.Module) -> int:
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen and t.device.type == "meta":
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


class FakeCard:
    def __init__(self, total: int, monkeypatch, *, ram: int | None = 1 << 40) -> None:
        self.total = total
        self.others: dict[str, int] = {}  # name -> bytes held by the host's models
        self.ram = ram
        self._modules: list[weakref.ref] = []
        self.uploads: list[tuple[int, torch.device]] = []
        self.pinned: list[torch.Tensor] = []
        monkeypatch.setattr(devices, "upload", self._upload)
        monkeypatch.setattr(devices, "pin", self._pin)
        monkeypatch.setattr(devices, "free_bytes", lambda d: self.free() if d.type == "cuda" else None)
        monkeypatch.setattr(devices, "available_ram", lambda: self.ram)
        monkeypatch.setattr(devices, "empty_cache", lambda d: None)
        monkeypatch.setattr(devices, "cuda_count", lambda: 2)
        monkeypatch.setattr(devices, "current_cuda_index", lambda: 0)
        monkeypatch.setattr(devices, "capability", lambda d: (8, 9))
        build = residency.Residency.__init__

        def tracked(r, module, **kw):  # every module the registry places is watched by the card
            self.track(module)
            build(r, module, **kw)

        monkeypatch.setattr(residency.Residency, "__init__", tracked)

    def track(self, module: nn.Module) -> nn.Module:
        if all(m() is not module for m in self._modules):
            self._modules.append(weakref.ref(module))
        return module

    def ours(self) -> int:
        gc.collect()
        live = [m() for m in self._modules]
        return sum(device_bytes(m) for m in live if m is not None)

    def used(self) -> int:
        return self.ours() + sum(self.others.values())

    def free(self) -> int:
        return self.total - self.used()

    def _upload(self, source: torch.Tensor, device: torch.device) -> torch.Tensor:
        assert device.type == "cuda"
        self.uploads.append((source.numel() * source.element_size(), device))
        return torch.empty_like(source, device="meta")

    def _pin(self, tensor: torch.Tensor) -> torch.Tensor:
        pinned = tensor.clone()
        self.pinned.append(pinned)
        return pinned


class RecordingHost:
    """A ``registry.HostMemory`` whose models are ``card.others``; ``make_room`` frees them in order."""

    def __init__(self, card: FakeCard, reserve: int = 0, low: bool = False) -> None:
        self.card, self._reserve, self.low = card, reserve, low
        self.requests: list[tuple[int, str]] = []

    def make_room(self, nbytes: int, device: torch.device) -> None:
        self.requests.append((nbytes, str(device)))
        for name in list(self.card.others):
            if self.card.free() >= nbytes:
                break
            del self.card.others[name]

    def reserve(self, device: torch.device) -> int:
        return self._reserve

    def low_vram(self) -> bool:
        return self.low


def fake_forward(monkeypatch) -> list[dict]:
    """``Pipeline.encode`` records where the weights are and returns zeros; ``LLM.to_device`` skips
    ``Module.to`` (no CUDA here). The list of records is returned."""
    from lib_llmcond import pipeline
    from lib_llmcond.encoders.llm import LLM
    from lib_llmcond.pipeline import EncodedText, PromptReport
    from lib_llmcond.residency import module_bytes

    seen: list[dict] = []

    def to_device(self, device):
        self.device = device
        self._prefixes.clear()

    def encode(self, texts, topts, progress=None):
        seen.append(
            {
                "texts": list(texts),
                "llm": (str(self.llm.device), device_bytes(self.llm.model), module_bytes(self.llm.model)),
                "adapter": (device_bytes(self.adapter), module_bytes(self.adapter)),
            }
        )
        return [EncodedText(torch.zeros(308, 2048), torch.zeros(1280), PromptReport(1, 512)) for _ in texts]

    monkeypatch.setattr(LLM, "to_device", to_device)
    monkeypatch.setattr(pipeline.Pipeline, "encode", encode)
    return seen
