"""Stand-ins of the hosts' VRAM management over a fake card (``vram_fakes.FakeCard``: ``card.others`` holds the
bytes of the host's models on the card; without a card there is always room).

Forge2 ``backend/memory_management.py`` and Forge1/reForge ``ldm_patched/modules/model_management.py`` (same
names in both): ``VRAMState``, ``vram_state``, ``current_loaded_models`` (most recently used first) of
``LoadedModel`` (``model``: the ModelPatcher, ``device``, ``model_unload()``), ``free_memory(memory_required,
device, keep_loaded=[])`` (from the least recently used, unloads models on ``device`` until
``get_free_memory(device) > memory_required``), ``load_models_gpu(models)`` (frees size * 1.3 + inference memory
for a model not loaded yet), ``get_free_memory``, ``minimum_inference_memory()`` (Forge2: 1 GiB; reForge:
0.8 GiB + its 400 MiB extra reserve), ``soft_empty_cache``; ``sd_model.forge_objects`` with ``unet`` (a
ModelPatcher with ``model_size()``), ``clip`` and ``vae`` (holding their ``patcher``); the host's own cond
path first loads the CLIP patcher (Forge1 ``sd_models_xl.get_learned_conditioning`` -> ``move_clip_to_gpu()``,
Forge2 ``StableDiffusionXL.get_learned_conditioning`` -> ``load_model_gpu(forge_objects.clip.patcher)``).
A1111 1.10.1 ``modules/lowvram.py``: ``module_in_gpu`` (the one part of the model on the GPU),
``send_everything_to_cpu()``, ``is_needed(sd_model)`` (``--lowvram``/``--medvram``/``--medvram-sdxl``); the
UNet is moved in by a forward pre-hook when sampling (``send_me_to_gpu``); without those flags the model stays
on the card.
"""

from __future__ import annotations

import enum
import types
from typing import Any

import torch

CUDA = torch.device("cuda", 0)
GiB = 1 << 30


class VRAMState(enum.Enum):
    DISABLED = 0
    NO_VRAM = 1
    LOW_VRAM = 2
    NORMAL_VRAM = 3
    HIGH_VRAM = 4
    SHARED = 5


class ModelPatcher:
    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size
        self.model = torch.nn.Module()
        self.load_device, self.offload_device = CUDA, torch.device("cpu")

    def model_size(self) -> int:
        return self.size


class VAE:
    def __init__(self, size: int) -> None:
        self.patcher = ModelPatcher("vae", size)


class LoadedModel:
    def __init__(self, manager: ForgeMemory, model: ModelPatcher) -> None:
        self.manager, self.model, self.device = manager, model, model.load_device

    def model_unload(self) -> None:
        self.manager.card_drop(self.model.name)
        self.manager.unloads.append(self.model.name)


class ForgeMemory:
    """The state behind one flavour's memory-management module."""

    def __init__(self, host: Any, inference: int) -> None:
        self.host, self.inference = host, inference
        self.current_loaded_models: list[LoadedModel] = []
        self.requests: list[tuple[int, torch.device]] = []  # free_memory calls from outside the manager
        self.unloads: list[str] = []
        self.loads: list[str] = []
        self.module: types.ModuleType | None = None

    def card_drop(self, name: str) -> None:
        if self.host.card is not None:
            self.host.card.others.pop(name, None)

    def get_free_memory(self, dev=None, torch_free_too=False):
        free = self.host.card.free() if self.host.card is not None else 1 << 40
        return (free, 0) if torch_free_too else free

    def minimum_inference_memory(self) -> int:
        return self.inference

    def free_memory(self, memory_required, device, keep_loaded=()):
        self.requests.append((int(memory_required), device))
        self._free(memory_required, device, keep_loaded)

    def _free(self, memory_required, device, keep_loaded=()) -> None:
        for i in range(len(self.current_loaded_models) - 1, -1, -1):
            if self.get_free_memory(device) > memory_required:
                break
            lm = self.current_loaded_models[i]
            if lm.device == device and lm not in keep_loaded:
                self.current_loaded_models.pop(i).model_unload()

    def load_models_gpu(self, models, memory_required=0) -> None:
        for patcher in models:
            found = [lm for lm in self.current_loaded_models if lm.model is patcher]
            if found:
                self.current_loaded_models.remove(found[0])
                self.current_loaded_models.insert(0, found[0])
                continue
            self._free(patcher.model_size() * 1.3 + self.inference, patcher.load_device)
            if self.host.card is not None:
                self.host.card.others[patcher.name] = patcher.model_size()
            self.current_loaded_models.insert(0, LoadedModel(self, patcher))
            self.loads.append(patcher.name)

    def build(self, name: str) -> types.ModuleType:
        self.module = types.ModuleType(name)
        self.module.__dict__.update(
            VRAMState=VRAMState,
            vram_state=VRAMState.NORMAL_VRAM,
            current_loaded_models=self.current_loaded_models,
            free_memory=self.free_memory,
            load_models_gpu=self.load_models_gpu,
            get_free_memory=self.get_free_memory,
            minimum_inference_memory=self.minimum_inference_memory,
            soft_empty_cache=lambda force=False: None,
        )
        return self.module


FORGE2_INFERENCE = GiB
FORGE1_INFERENCE = int(0.8 * GiB) + 400 * (1 << 20)


CLIP_BYTES = 1600 << 20  # SDXL's two CLIP text encoders in fp16


class ForgeObjects:
    """``sd_model.forge_objects``: ``unet`` (a ModelPatcher), ``clip`` and ``vae`` (holding their ``patcher``)."""

    def __init__(self, unet_bytes: int, vae_bytes: int, vram: ForgeMemory) -> None:
        self.unet = ModelPatcher("unet", unet_bytes)
        self.vae = VAE(vae_bytes)
        self.clip = types.SimpleNamespace(patcher=ModelPatcher("clip", CLIP_BYTES))
        self.vram = vram  # (not in the hosts: how the stand-in's cond path reaches its manager)


class A1111LowVram:
    """``modules/lowvram.py`` of A1111 1.10.1, reduced to the UNet and the VAE."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.module_in_gpu: str | None = None
        self.sends = 0

    def is_needed(self, sd_model) -> bool:
        c = self.host.shared.cmd_opts
        return bool(
            getattr(c, "lowvram", False)
            or getattr(c, "medvram", False)
            or (getattr(c, "medvram_sdxl", False) and hasattr(sd_model, "conditioner"))
        )

    def send_everything_to_cpu(self) -> None:
        self.sends += 1
        if self.module_in_gpu is not None and self.host.card is not None:
            self.host.card.others.pop(self.module_in_gpu, None)
        self.module_in_gpu = None

    def send_me_to_gpu(self, name: str, size: int) -> None:
        if self.module_in_gpu == name:
            return
        self.send_everything_to_cpu()
        self.sends -= 1  # a move inside the host, not a request
        if self.host.card is not None:
            self.host.card.others[name] = size
        self.module_in_gpu = name

    def build(self) -> types.ModuleType:
        m = types.ModuleType("modules.lowvram")
        m.__dict__.update(
            send_everything_to_cpu=self.send_everything_to_cpu, is_needed=self.is_needed, module_in_gpu=None
        )
        return m
