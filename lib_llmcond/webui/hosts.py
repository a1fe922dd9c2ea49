"""Which host this is and what kind of model it loaded, without importing host packages eagerly."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import torch

HOSTS = ("forge2", "forge1", "a1111")
SDXL_BASE, SDXL_REFINER, OTHER = "sdxl", "sdxl_refiner", "other"
_REFINER_CLASS_HINT = "Refiner"
# Model classes that are SDXL base models on some host even without the ``is_sdxl`` flag:
# reForge dev's ldm_patched ``model_base.SDXL`` and Forge2's ``StableDiffusionXL``.
SDXL_BASE_CLASSES = ("SDXL", "StableDiffusionXL")


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def detect_host() -> str:
    """``forge2`` (has ``backend.diffusion_engine``), ``forge1`` (Forge1/reForge: ``ldm_patched``) or ``a1111``."""
    if _has_module("backend") and _has_module("backend.diffusion_engine"):
        return "forge2"
    if _has_module("ldm_patched"):
        return "forge1"
    return "a1111"


def host_module(name: str) -> Any | None:
    """A host module (``modules.shared`` ...) or None where this host has none."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _embedder_keys(model: Any) -> set[str]:
    conditioner = getattr(model, "conditioner", None)
    embedders = getattr(conditioner, "embedders", None) or []
    return {str(getattr(e, "input_key", "")) for e in embedders}


def model_kind(model: Any) -> str:
    """``sdxl`` for an SDXL base model, ``sdxl_refiner`` for a refiner, else ``other`` (SD1.5, SD2, ...).

    A1111/Forge1/reForge sgm engines and Forge2 set ``is_sdxl``; refiners carry an aesthetic-score embedder
    (sgm) or a refiner class/flag (Forge2, reForge dev).
    """
    if getattr(model, "is_sdxl_refiner", False) or _REFINER_CLASS_HINT in type(model).__name__:
        return SDXL_REFINER
    if "aesthetic_score" in _embedder_keys(model):
        return SDXL_REFINER
    if getattr(model, "is_sdxl", False) or type(model).__name__ in SDXL_BASE_CLASSES:
        return SDXL_BASE
    return OTHER


def model_device(model: Any) -> torch.device:
    """Where the host wants conditioning tensors: the model's own device."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        devices = host_module("modules.devices")
        return getattr(devices, "device", torch.device("cpu")) if devices else torch.device("cpu")


def crop(opts: Any, host: str) -> tuple[int, int]:
    """(crop_top, crop_left) the host uses for SDXL size conditioning (Forge2 always uses 0, 0)."""
    if host == "forge2" or opts is None:
        return 0, 0
    return int(getattr(opts, "sdxl_crop_top", 0) or 0), int(getattr(opts, "sdxl_crop_left", 0) or 0)


def is_sd_conditioning(batch: Any) -> bool:
    """A ``prompt_parser.SdConditioning`` (a list of texts with width/height), not the model-load ``[""]``."""
    return (
        isinstance(batch, list)
        and type(batch).__name__ == "SdConditioning"
        and hasattr(batch, "width")
        and hasattr(batch, "height")
    )
