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


def _tiny_model_dir(tmp: Path, tokenizer_writer, family: str) -> Path:
    """A GGUF needs tensors: a tiny random model next to the tokenizer."""
    from lib_llmcond.tiny.llm import write_tiny_llm

    tokenizer_writer(tmp)
    return write_tiny_llm(tmp, family, vocab_size=load_tokenizer(tmp).vocab_size)


@pytest.fixture(scope="module")
def gemma_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from lib_llmcond.tiny.tokenizer import write_tiny_gemma_tokenizer

    d = _tiny_model_dir(tmp_path_factory.mktemp("spm"), write_tiny_gemma_tokenizer, "gemma3")
    return d, write_tiny_gguf(d, d / "tiny.gguf")


def _same(ours, src, texts: list[str]) -> None:
    for text in texts:
        assert ours.encode(text) == src.encode(text), text
    for attr in ("bos_id", "eos_id", "pad_id", "vocab_size"):
        assert getattr(ours, attr) == getattr(src, attr), attr
    assert ours.special.add_bos == src.special.add_bos


def test_spm_tokenizer_from_metadata_equals_source(gemma_gguf: tuple[Path, Path], tmp_path: Path) -> None:
    from lib_llmcond.text.tokenizer import SPTokenizer

    src_dir, path = gemma_gguf
    src, ours = load_tokenizer(src_dir), load_gguf_tokenizer(path, cache_dir=tmp_path)
    assert isinstance(ours, SPTokenizer)
    _same(ours, src, TEXTS)
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
    assert str(gguf_tokenizer_dir(gemma_gguf[1])).startswith(str(tmp_path / "c"))


def _write_bytelevel_tokenizer(directory: Path) -> None:
    """A small Qwen-style byte-level BPE trained here (NFC, Qwen2 split pattern), with special tokens."""
    import json

    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers import Tokenizer as Backend

    from lib_llmcond.text.gguf_tokenizer import PRE_TOKENIZERS

    tok = Backend(models.BPE())
    tok.normalizer = normalizers.NFC()
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    split = pre_tokenizers.Split(Regex(PRE_TOKENIZERS["qwen2"][0]), behavior="isolated")
    tok.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [t for t in TEXTS if t] * 20 + ["the quick brown fox jumps over the lazy dog 0123456789"] * 50
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens(["<think>"])  # a user-defined (non-special) added token
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "padding_side": "right",
        "add_bos_token": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def test_bytelevel_bpe_from_metadata_equals_source(tmp_path: Path) -> None:
    d = _tiny_model_dir(tmp_path / "bpe", _write_bytelevel_tokenizer, "qwen3")
    path = write_tiny_gguf(d, d / "qwen.gguf")
    src, ours = load_tokenizer(d), load_gguf_tokenizer(path, cache_dir=tmp_path / "cache")
    texts = [*TEXTS, "<|im_start|>user\nhi<|im_end|>\n<think>x", "don't  stop 123456 ünïcödé the fox"]
    _same(ours, src, texts)
    assert ours.token_id("<|im_start|>") == src.token_id("<|im_start|>") is not None
