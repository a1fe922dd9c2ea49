"""PEFT LoRA folders (``adapter_config.json`` + ``adapter_model.safetensors``) merged into a loaded transformer.

``W += scale * B @ A`` with ``scale = alpha / r`` (``alpha / sqrt(r)`` with rslora), for every target module the
config names; rank, alpha and targets come from the config, never guessed.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from lib_llmcond.errors import IncompatibleModelsError, ModelFileError
from lib_llmcond.models import LORA_SUBFOLDER  # an LLM folder may carry its LoRA there; it is merged at load

_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?:model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.default)?\.weight$"
)


def find_lora(llm_dir: Path) -> Path | None:
    cand = llm_dir / LORA_SUBFOLDER
    return cand if (cand / "adapter_config.json").is_file() else None


def _read(lora_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        config = json.loads((lora_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFileError(
            f"unreadable adapter_config.json ({e})", path=lora_dir, fix="re-download the LoRA"
        ) from e
    weights = lora_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelFileError(
            "no adapter_model.safetensors",
            path=lora_dir,
            fix="use the LoRA's safetensors file (pickles are not read)",
        )
    try:
        return config, load_file(str(weights))
    except Exception as e:
        raise ModelFileError(
            f"unreadable LoRA weights ({e})", path=weights, fix="re-download the LoRA"
        ) from e


def _scale(config: dict) -> float:
    r, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _targets(config: dict) -> set[str] | None:
    targets = config.get("target_modules")
    if isinstance(targets, str):  # a regex in PEFT
        return None
    return set(targets or [])


def merge_lora(model: torch.nn.Module, lora_dir: str | Path) -> int:
    """Merge the LoRA into ``model`` in place; returns how many weight matrices changed."""
    lora_dir = Path(lora_dir)
    config, tensors = _read(lora_dir)
    scale, targets = _scale(config), _targets(config)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = _KEY.match(key)
        if m is None:
            continue
        pairs.setdefault(m["module"], {})[m["part"]] = value
    modules = dict(model.named_modules())
    merged = 0
    for name, ab in sorted(pairs.items()):
        module = modules.get(name)
        if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor) or len(ab) != 2:
            raise IncompatibleModelsError(
                f"the LoRA targets {name!r}, which this LLM does not have",
                path=lora_dir,
                fix="use the LoRA made for this base model",
            )
        if targets is not None and name.rsplit(".", 1)[-1] not in targets:
            continue
        delta = ab["B"].float() @ ab["A"].float()
        if delta.shape != module.weight.shape:
            raise IncompatibleModelsError(
                f"LoRA delta for {name} is {list(delta.shape)}, the weight is {list(module.weight.shape)}",
                path=lora_dir,
                fix="use the LoRA made for this base model",
            )
        with torch.no_grad():
            module.weight.copy_((module.weight.float() + scale * delta).to(module.weight.dtype))
        merged += 1
    if not merged:
        raise IncompatibleModelsError(
            "the LoRA changes nothing in this LLM", path=lora_dir, fix="check the LoRA"
        )
    return merged
