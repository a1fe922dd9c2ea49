"""A .gguf file through the library's front doors: load_llm, load_llm_tokenizer, info."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lib_llmcond.encoders.llm import load_llm, load_llm_tokenizer
from lib_llmcond.info import describe_path
from lib_llmcond.tiny.gguf import write_tiny_gguf
from lib_llmcond.tiny.llm import write_tiny_llm
from lib_llmcond.tiny.tokenizer import write_tiny_gemma_tokenizer


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("gemma")
    write_tiny_gemma_tokenizer(d, prefix27=True)
    write_tiny_llm(d, "gemma3", vocab_size=512, num_hidden_layers=6, query_pre_attn_scalar=256,
                   layer_types=["sliding_attention"] * 5 + ["full_attention"], sliding_window_pattern=6)  # fmt: skip
    return d, write_tiny_gguf(d, d.parent / "tiny-gemma.gguf", qtype="F32")


def test_load_llm_gguf_equals_directory(pair: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LLMCOND_CACHE", str(tmp_path))
    d, path = pair
    a, b = load_llm(d, dtype=torch.float32), load_llm(path, dtype=torch.float32)
    assert (a.family, a.hidden_size) == (b.family, b.hidden_size)
    prompt = "a cat sitting under a tree, masterpiece"
    rows_a = a.text_path_for(None).tokenize(prompt, a.tokenizer)
    rows_b = b.text_path_for(None).tokenize(prompt, b.tokenizer)
    assert rows_a == rows_b and rows_a.adapter_start == 27
    batch = a.text_path_for(None).batch([rows_a], a.tokenizer)
    assert torch.equal(a.hidden_states(batch), b.hidden_states(batch))
    tok, family = load_llm_tokenizer(path)
    assert family == "gemma3" and tok.encode(prompt) == a.tokenizer.encode(prompt)


def test_info_reports_quant_types(pair: tuple[Path, Path], tmp_path: Path) -> None:
    path = write_tiny_gguf(pair[0], tmp_path / "q8.gguf", qtype="Q8_0")
    info = describe_path(path)
    assert info["family"] == "gemma3" and info["hidden_size"] == 64
    assert "Q8_0" in info["quantization"] and "F32" in info["quantization"]


def test_small_models_dequantize_their_linears_once(
    pair: tuple[Path, Path], tmp_path: Path, monkeypatch
) -> None:
    """dequantize="linears": dense linears read from the file at load, the embedding stays quantized; the
    numbers equal the per-forward dequantization's. "auto" picks it when the dense linears fit the limit."""
    from torch import nn

    from lib_llmcond.encoders.gguf import loader
    from lib_llmcond.encoders.gguf.quantized import GGUFEmbedding, GGUFLinear
    from lib_llmcond.encoders.gguf.reader import open_gguf

    path = write_tiny_gguf(pair[0], tmp_path / "q8.gguf", qtype="Q8_0")
    _, lazy = loader.load_gguf_transformer(path, dtype=torch.float32, dequantize="none")
    _, dense = loader.load_gguf_transformer(path, dtype=torch.float32, dequantize="linears")
    assert isinstance(dense.embed_tokens, GGUFEmbedding) and isinstance(
        lazy.layers[0].mlp.up_proj, GGUFLinear
    )
    assert type(dense.layers[0].mlp.up_proj) is nn.Linear
    ids = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.allclose(dense(ids, mask), lazy(ids, mask), atol=1e-5)
    gf = open_gguf(path)
    monkeypatch.setattr(loader, "DENSE_LINEARS_LIMIT", 100.0)
    assert loader.auto_dequantize(gf, torch.bfloat16) == "linears"
    monkeypatch.setattr(loader, "DENSE_LINEARS_LIMIT", 0.01)
    assert loader.auto_dequantize(gf, torch.bfloat16) == "none"
