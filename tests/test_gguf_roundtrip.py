"""A tiny random Gemma-3 as safetensors and as F32 / Q8_0 GGUF: same hidden states (F32 exact, Q8_0 close)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lib_llmcond.encoders.gguf.attach import attach_gguf
from lib_llmcond.encoders.gguf.quantized import GGUFEmbedding, GGUFLinear
from lib_llmcond.encoders.gguf.reader import hf_config, open_gguf
from lib_llmcond.tiny.gguf import write_tiny_gguf
from lib_llmcond.tiny.tokenizer import write_tiny_gemma_tokenizer

pytestmark = pytest.mark.oracle


@pytest.fixture(scope="module")
def tiny_gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    d = tmp_path_factory.mktemp("tiny_gemma3")
    write_tiny_gemma_tokenizer(d)
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model")).get_piece_size()
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, sliding_window=4, max_position_embeddings=256,
        query_pre_attn_scalar=256, rope_theta=1e6, rope_local_base_freq=1e4,
    )  # fmt: skip
    model = Gemma3ForCausalLM(cfg)
    with torch.no_grad():  # random norms (HF initialises them to zero, which would hide a w+1 mistake)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    model.save_pretrained(d, safe_serialization=True)
    return d


def _reference(d: Path):
    from transformers import Gemma3ForCausalLM

    return Gemma3ForCausalLM.from_pretrained(d, dtype=torch.float32).model.eval()


def _ours(gguf_path: Path, **kw):
    from transformers import Gemma3TextConfig, Gemma3TextModel

    gf = open_gguf(gguf_path)
    cfg = {k: v for k, v in hf_config(gf).items() if k != "model_type"}
    model = Gemma3TextModel(Gemma3TextConfig(**cfg)).eval()
    attach_gguf(model, gf, dtype=torch.float32, **kw)
    return model


def _hidden(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


IDS = torch.tensor([[2, 5, 17, 99, 250, 3, 7, 400, 12, 1, 33, 8]])


def test_f32_gguf_is_exact(tiny_gemma_dir: Path, tmp_path: Path) -> None:
    path = write_tiny_gguf(tiny_gemma_dir, tmp_path / "tiny-f32.gguf", qtype="F32")
    assert torch.equal(_hidden(_ours(path), IDS), _hidden(_reference(tiny_gemma_dir), IDS))


@pytest.mark.parametrize("mode", ["none", "all"])
def test_q8_0_gguf_is_close(tiny_gemma_dir: Path, tmp_path: Path, mode: str) -> None:
    path = write_tiny_gguf(tiny_gemma_dir, tmp_path / "tiny-q8_0.gguf", qtype="Q8_0")
    ours = _ours(path, dequantize=mode)
    kinds = {type(m) for m in ours.modules()}
    assert (GGUFLinear in kinds and GGUFEmbedding in kinds) == (mode == "none")
    a, b = _hidden(ours, IDS), _hidden(_reference(tiny_gemma_dir), IDS)
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.999
    assert not torch.equal(a, b)


def test_config_from_metadata(tiny_gemma_dir: Path, tmp_path: Path) -> None:
    import json

    path = write_tiny_gguf(tiny_gemma_dir, tmp_path / "tiny.gguf")
    cfg, src = hf_config(open_gguf(path)), json.loads((tiny_gemma_dir / "config.json").read_text())
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "sliding_window", "query_pre_attn_scalar", "layer_types"):  # fmt: skip
        assert cfg[key] == src[key], key
    assert cfg["rope_theta"] == src["rope_theta"] and cfg["rms_norm_eps"] == pytest.approx(
        src["rms_norm_eps"]
    )
