"""Adapters: LLM hidden states -> SDXL crossattn [B, T, 2048] + pooled [B, 1280].

Family A ``LLMToSDXLAdapter`` (RouWei, ``llm_to_sdxl``) and family B Perceiver resampler (``perceiver``);
``load_adapter`` picks the family from the file's keys."""

from .base import Adapter, AdapterOutput
from .loader import AdapterInfo, check_pair, ensure_pair, inspect_adapter, load_adapter

__all__ = [
    "Adapter",
    "AdapterInfo",
    "AdapterOutput",
    "check_pair",
    "ensure_pair",
    "inspect_adapter",
    "load_adapter",
]
