"""Tiny random models as safetensors and as F32 / Q8_0 GGUF in llama.cpp conventions: same hidden states."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lib_llmcond.encoders.gguf.loader import load_gguf_transformer
from lib_llmcond.encoders.gguf.quantized import GGUFEmbedding, GGUFLinear
from lib_llmcond.encoders.gguf.reader import hf_config, open_gguf
from lib_llmcond.encoders.weights import load_transformer
from lib_llmcond.tiny.gguf import write_tiny_gguf
from lib_llmcond.tiny.llm import write_tiny_llm
from lib_llmcond.tiny.tokenizer import write_tiny_gemma_tokenizer

# GGUF metadata has no query_pre_attn_scalar / layer pattern: the tiny model uses the Gemma-3 values the reader
# assumes (256, every 6th layer global), as real Gemma-3 checkpoints do.
GEMMA_GGUF_DEFAULTS = dict(
    num_hidden_layers=6,
    sliding_window_pattern=6,
    layer_types=["sliding_attention"] * 5 + ["full_attention"],
    query_pre_attn_scalar=256,
    sliding_window=4,
)


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny_gemma3")
    write_tiny_gemma_tokenizer(d)
    return write_tiny_llm(d, "gemma3", vocab_size=512, **GEMMA_GGUF_DEFAULTS)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llm(tmp_path_factory.mktemp("tiny_qwen3"), "qwen3", vocab_size=300)


IDS = torch.tensor([[2, 5, 17, 99, 250, 3, 7, 400, 12, 1, 33, 8], [2, 40, 41, 42, 43, 44, 45, 0, 0, 0, 0, 0]])
MASK = (torch.arange(12) < torch.tensor([[12], [7]])).long()


def _hidden(model, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, MASK) * MASK[..., None]


@pytest.mark.parametrize("family", ["gemma3", "qwen3"])
def test_f32_gguf_is_exact(family: str, gemma_dir: Path, qwen_dir: Path, tmp_path: Path) -> None:
    src = gemma_dir if family == "gemma3" else qwen_dir
    path = write_tiny_gguf(src, tmp_path / "tiny-f32.gguf", qtype="F32")
    cfg, ours = load_gguf_transformer(path, dtype=torch.float32)
    ref_cfg, ref = load_transformer(src, dtype=torch.float32)
    assert cfg == ref_cfg
    ids = IDS % cfg.vocab_size
    assert torch.equal(_hidden(ours, ids), _hidden(ref, ids))


@pytest.mark.parametrize("mode", ["none", "all"])
@pytest.mark.parametrize("family", ["gemma3", "qwen3"])
def test_q8_0_gguf_is_close(family: str, mode: str, gemma_dir: Path, qwen_dir: Path, tmp_path: Path) -> None:
    src = gemma_dir if family == "gemma3" else qwen_dir
    path = write_tiny_gguf(src, tmp_path / "tiny-q8_0.gguf", qtype="Q8_0")
    _, ours = load_gguf_transformer(path, dtype=torch.float32, dequantize=mode)
    kinds = {type(m) for m in ours.modules()}
    assert (GGUFLinear in kinds and GGUFEmbedding in kinds) == (mode == "none")
    _, ref = load_transformer(src, dtype=torch.float32)
    ids = IDS % ref.config.vocab_size
    a, b = _hidden(ours, ids), _hidden(ref, ids)
    cos = torch.nn.functional.cosine_similarity(a[MASK.bool()], b[MASK.bool()], dim=-1)
    assert cos.min() > 0.999 and not torch.equal(a, b)


def test_bf16_compute(gemma_dir: Path, tmp_path: Path) -> None:
    path = write_tiny_gguf(gemma_dir, tmp_path / "tiny-q8_0.gguf", qtype="Q8_0")
    _, ours = load_gguf_transformer(path, dtype=torch.bfloat16)
    _, ref = load_transformer(gemma_dir, dtype=torch.float32)
    a, b = _hidden(ours).float(), _hidden(ref)
    assert _hidden(ours).dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(a[MASK.bool()], b[MASK.bool()], dim=-1).min() > 0.99


def test_config_from_metadata(gemma_dir: Path, tmp_path: Path) -> None:
    path = write_tiny_gguf(gemma_dir, tmp_path / "tiny.gguf")
    cfg, src = hf_config(open_gguf(path)), json.loads((gemma_dir / "config.json").read_text())
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "sliding_window", "query_pre_attn_scalar", "layer_types"):  # fmt: skip
        assert cfg[key] == src[key], key
    assert cfg["rope_theta"] == src["rope_theta"] and cfg["rms_norm_eps"] == pytest.approx(
        src["rms_norm_eps"]
    )


@pytest.mark.oracle
def test_f32_gguf_in_transformers_module_equals_transformers(gemma_dir: Path, tmp_path: Path) -> None:
    """The generic loader hosting GGUF weights in transformers' own Gemma-3 module, against that module."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Gemma3TextModel

    from lib_llmcond.encoders.gguf.loader import load_gguf_module

    path = write_tiny_gguf(gemma_dir, tmp_path / "tiny-f32.gguf")

    def factory(cfg: dict) -> torch.nn.Module:
        return Gemma3TextModel(Gemma3TextConfig(**{k: v for k, v in cfg.items() if k != "model_type"}))

    ours = load_gguf_module(path, factory, dtype=torch.float32)
    ref = Gemma3ForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32).model.eval()
    with torch.no_grad():
        a = ours(input_ids=IDS[:1]).last_hidden_state
        b = ref(input_ids=IDS[:1]).last_hidden_state
    assert torch.equal(a, b)
