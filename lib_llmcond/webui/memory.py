"""The host's memory manager as the engine's ``registry.HostMemory``: asked only when our weights need VRAM.

| host | ``make_room(nbytes, device)`` | ``reserve(device)`` | low-VRAM modes (``auto`` offloads) |
|---|---|---|---|
| Forge2 | ``backend.memory_management.free_memory(nbytes, device)``: unloads its least recently used models until ``nbytes`` are free | ``minimum_inference_memory()`` + its UNet and VAE while they are off the card | ``vram_state`` LOW_VRAM / NO_VRAM |
| Forge1, reForge | the same in ``ldm_patched.modules.model_management`` | the same | the same |
| A1111 | with ``--lowvram``/``--medvram``: ``lowvram.send_everything_to_cpu()`` (its one module on the GPU); then ``devices.torch_gc()`` | ``A1111_RESERVE`` (its models stay on the card) | ``--lowvram``, ``--medvram``, ``--medvram-sdxl`` |

The engine calls ``make_room`` only when free memory is short of a load or a move onto the card, never on a
cache hit or while our models are resident, with the bytes of the weights it is about to place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lib_llmcond.webui.hosts import host_module

MANAGERS = {"forge2": "backend.memory_management", "forge1": "ldm_patched.modules.model_management"}
LOW_VRAM_STATES = ("LOW_VRAM", "NO_VRAM")
A1111_LOW_VRAM_FLAGS = ("lowvram", "medvram", "medvram_sdxl")
A1111_RESERVE = (
    1 << 30
)  # inference beside A1111's resident models (Forge's minimum_inference_memory is 1 GiB)


@dataclass(frozen=True)
class HostMemory:
    host: str

    def _manager(self) -> Any | None:
        name = MANAGERS.get(self.host)
        return host_module(name) if name else None

    def make_room(self, nbytes: int, device: torch.device) -> None:
        manager = self._manager()
        if manager is not None:
            manager.free_memory(nbytes, device)
        elif self.host == "a1111" and _a1111_lowvram_active():
            host_module("modules.lowvram").send_everything_to_cpu()
        devices = host_module("modules.devices")
        if devices is not None:
            devices.torch_gc()

    def reserve(self, device: torch.device) -> int:
        manager = self._manager()
        if manager is None:
            return A1111_RESERVE
        return int(manager.minimum_inference_memory()) + _forge_models_away(manager, device)

    def low_vram(self) -> bool:
        manager = self._manager()
        if manager is not None:
            return getattr(getattr(manager, "vram_state", None), "name", "") in LOW_VRAM_STATES
        shared = host_module("modules.shared")
        cmd_opts = getattr(shared, "cmd_opts", None)
        return any(bool(getattr(cmd_opts, flag, False)) for flag in A1111_LOW_VRAM_FLAGS)


def for_host(host: str) -> HostMemory:
    return HostMemory(host)


def _sd_model() -> Any | None:
    sd_models = host_module("modules.sd_models")
    data = getattr(sd_models, "model_data", None)
    return getattr(data, "sd_model", None)


def _a1111_lowvram_active() -> bool:
    """A1111 1.10 sets ``sd_model.lowvram`` when ``lowvram.setup_for_low_vram`` moved the model apart."""
    return bool(getattr(_sd_model(), "lowvram", False)) and host_module("modules.lowvram") is not None


def _forge_models_away(manager: Any, device: torch.device) -> int:
    """Bytes of the checkpoint's UNet and VAE (``sd_model.forge_objects``) not loaded on ``device`` now: the host
    brings them back for sampling and decoding, so they are not room for us."""
    objects = getattr(_sd_model(), "forge_objects", None)
    patchers = [getattr(objects, "unet", None), getattr(getattr(objects, "vae", None), "patcher", None)]
    loaded = {
        id(getattr(lm.model, "model", None))
        for lm in getattr(manager, "current_loaded_models", [])
        if lm.model is not None and lm.device == device
    }
    return sum(int(p.model_size()) for p in patchers if p is not None and id(p.model) not in loaded)
