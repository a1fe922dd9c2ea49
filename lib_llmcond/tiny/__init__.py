"""TINY RANDOM models (not real weights) for the demo, the tests and smoke benchmarks."""

from __future__ import annotations

from pathlib import Path

from lib_llmcond.tiny.adapter import write_tiny_adapter
from lib_llmcond.tiny.llm import TINY, write_tiny_llm
from lib_llmcond.tiny.tokenizer import write_tiny_gemma_tokenizer

TINY_VOCAB = 512
TINY_ADAPTER_SHAPE = {"n_wide": 1, "n_narrow": 1, "mlp_hidden": 256}


def build_tiny_gemma(directory: str | Path, *, seed: int = 0, prefix27: bool = True) -> Path:
    """A tiny random Gemma-3 HF directory with a tiny trained tokenizer."""
    directory = Path(directory)
    write_tiny_gemma_tokenizer(directory, vocab_size=TINY_VOCAB, prefix27=prefix27)
    return write_tiny_llm(directory, "gemma3", vocab_size=TINY_VOCAB, seed=seed)


def build_tiny_adapter(path: str | Path, *, llm_dim: int | None = None, seed: int = 0) -> Path:
    dim = llm_dim if llm_dim is not None else TINY["gemma3"]["hidden_size"]
    return write_tiny_adapter(path, llm_dim=dim, seed=seed, **TINY_ADAPTER_SHAPE)


def build_demo_models(root: str | Path) -> tuple[Path, Path]:
    """``root/LLM/tiny-gemma3`` and ``root/llm_adapters/tiny-adapter.safetensors`` (cached if present)."""
    root = Path(root)
    llm = root / "LLM" / "tiny-gemma3"
    adapter = root / "llm_adapters" / "tiny-adapter.safetensors"
    if not (llm / "model.safetensors").is_file():
        build_tiny_gemma(llm)
    if not adapter.is_file():
        adapter.parent.mkdir(parents=True, exist_ok=True)
        build_tiny_adapter(adapter)
    return llm, adapter
