"""Byte-level BPE (GPT-2 / Qwen style) rebuilt from its vocabulary and merges with `tokenizers` components.

Used when tokenizer.json is absent or written in a format the installed `tokenizers` cannot read (A1111 pins
tokenizers 0.13.3): the vocabulary, merges, split pattern and added tokens are read as plain JSON/text and the
tokenizer is assembled from parts every `tokenizers` version since 0.13 has.
"""

from __future__ import annotations

import json
from pathlib import Path

QWEN2_SPLIT_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

Merges = list[tuple[str, str]]


def read_bytelevel_files(directory: Path) -> tuple[dict[str, int], Merges, str, list[dict]] | None:
    """(vocab, merges, split pattern, added tokens) from vocab.json + merges.txt or from a byte-level BPE
    tokenizer.json; None when the directory holds neither."""
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    if vocab_path.is_file() and merges_path.is_file():
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
        return vocab, _read_merges_txt(merges_path), QWEN2_SPLIT_PATTERN, []
    tj = directory / "tokenizer.json"
    if not tj.is_file():
        return None
    data = json.loads(tj.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(data.get("pre_tokenizer")):
        return None
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    pattern = _split_pattern(data.get("pre_tokenizer")) or QWEN2_SPLIT_PATTERN
    return model["vocab"], merges, pattern, list(data.get("added_tokens") or [])


def _read_merges_txt(path: Path) -> Merges:
    out: Merges = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line or line.startswith("#version"):
            continue
        a, b = line.split(" ", 1)
        out.append((a, b))
    return out


def _split_pattern(pre: dict | None) -> str | None:
    if not isinstance(pre, dict):
        return None
    if pre.get("type") == "Split":
        return (pre.get("pattern") or {}).get("Regex")
    for sub in pre.get("pretokenizers") or []:
        found = _split_pattern(sub)
        if found:
            return found
    return None


def build_bytelevel_tokenizer(vocab: dict[str, int], merges: Merges, added: list[dict], *, pattern: str):
    """A `tokenizers.Tokenizer` equivalent to transformers' Qwen2TokenizerFast on the same vocabulary.

    ``added`` holds dicts with ``id``, ``content`` and optional ``special``/``lstrip``/``rstrip``/``normalized``;
    each must land on its own id (checked)."""
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer(models.BPE(vocab=dict(vocab), merges=list(merges), fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    seen: set[str] = set()
    for entry in sorted(added, key=lambda e: int(e["id"])):
        content = entry["content"]
        if content in seen:
            continue
        seen.add(content)
        token = AddedToken(
            content,
            single_word=bool(entry.get("single_word", False)),
            lstrip=bool(entry.get("lstrip", False)),
            rstrip=bool(entry.get("rstrip", False)),
            normalized=bool(entry.get("normalized", False)),
        )
        (tok.add_special_tokens if entry.get("special", True) else tok.add_tokens)([token])
        got = tok.token_to_id(content)
        if got != int(entry["id"]):
            raise ValueError(f"added token {content!r} landed on id {got}, expected {entry['id']}")
    return tok
