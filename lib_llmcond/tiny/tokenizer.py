"""TINY TEST TOKENIZER: a small Gemma-like SentencePiece BPE trained in about a second, no network.

It mimics what matters of the real Gemma tokenizer: byte fallback, ids pad 0 / eos 1 / bos 2 / unk 3, the turn
markers as single tokens, no dummy prefix, identity normalization, whitespace kept, left padding. It is NOT the real
Gemma vocabulary. With ``prefix27=True`` the default system prompt's words are whole tokens, so the rendered Gemma-3
system prefix is 27 tokens as on the real tokenizer.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

GEMMA_SPECIALS = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}
TURN_TOKENS = ("<start_of_turn>", "<end_of_turn>")
# Newline runs are single tokens in Gemma; SentencePiece trains line by line, so they are declared here.
NEWLINE_TOKENS = ("\n", "\n\n")
CONTROL_TOKENS = ("<mask>",)

_WORDS_TEXT = (
    "a girl boy cat dog house tree sky cloud river mountain city street night day light dark red blue green yellow "
    "white black long short hair eyes dress shirt hat smile standing sitting running holding looking at the viewer "
    "with and in on of under over near behind beside masterpiece best quality high detailed portrait landscape "
    "painting photo style anime sunset rain snow flower garden window room table chair book cup sword magic forest "
    "ocean beach sand wave moon star fire water wind small large old young happy sad bright soft warm cold"
)
_WORDS = tuple(_WORDS_TEXT.split())
_SYSTEM_SENTENCES = (
    "You are expert in understanding of user prompts for image generations.",
    "Create an image according to the prompt from user.",
)


def _corpus(prefix27: bool) -> list[str]:
    rng = random.Random(1234)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))) for _ in range(400)]
    lines += [w for w in _WORDS for _ in range(3)]
    lines += ["user", "model"] * 50
    lines += [", ".join(rng.choice(_WORDS) for _ in range(6)) + "." for _ in range(100)]
    lines += ["1girl, 2boys, 1024 x 768, 3 cats", "Hello world!", "Élan café naïve"] * 5
    if prefix27:
        lines += list(_SYSTEM_SENTENCES) * 60
        lines += [" ".join(_SYSTEM_SENTENCES)] * 60
    return lines


def train_tiny_gemma_spm(*, vocab_size: int = 1000, prefix27: bool = False) -> bytes:
    """The serialized SentencePiece model (deterministic for the same arguments). ``vocab_size`` is an upper
    bound (the corpus yields about 1130 pieces at most); below about 310 the byte pieces do not fit."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(prefix27)),
        model_writer=out,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece=GEMMA_SPECIALS["pad"],
        eos_piece=GEMMA_SPECIALS["eos"],
        bos_piece=GEMMA_SPECIALS["bos"],
        unk_piece=GEMMA_SPECIALS["unk"],
        control_symbols=list(CONTROL_TOKENS),
        user_defined_symbols=list(TURN_TOKENS) + list(NEWLINE_TOKENS),
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
    )
    return out.getvalue()


def _added_tokens_decoder(model: bytes) -> dict[str, dict]:
    from lib_llmcond.text.spm_model import CONTROL, UNKNOWN, USER_DEFINED, piece_types

    out = {}
    for i, (piece, kind) in enumerate(piece_types(model)):
        if kind in (CONTROL, UNKNOWN, USER_DEFINED):
            special = piece not in NEWLINE_TOKENS
            out[str(i)] = {
                "content": piece,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": special,
            }
    return out


def write_tiny_gemma_tokenizer(
    directory: Path | str, *, vocab_size: int = 1000, prefix27: bool = False
) -> Path:
    """Write tokenizer.model, tokenizer_config.json and special_tokens_map.json into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = train_tiny_gemma_spm(vocab_size=vocab_size, prefix27=prefix27)
    if prefix27:
        _check_prefix27(model, vocab_size)
    (directory / "tokenizer.model").write_bytes(model)
    smap = {f"{k}_token": v for k, v in GEMMA_SPECIALS.items()}
    smap["additional_special_tokens"] = list(TURN_TOKENS)
    config = {
        "tokenizer_class": "GemmaTokenizer",
        "added_tokens_decoder": _added_tokens_decoder(model),
        **{k: v for k, v in smap.items() if k != "additional_special_tokens"},
        "add_bos_token": True,
        "add_eos_token": False,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1000000,
        "spaces_between_special_tokens": False,
        "sp_model_kwargs": {},
        "legacy": False,
        "_comment": "TINY TEST TOKENIZER built by lib_llmcond.tiny: not a real Gemma vocabulary",
    }
    _write_json(directory / "tokenizer_config.json", config)
    _write_json(directory / "special_tokens_map.json", smap)
    return directory


def _check_prefix27(model: bytes, vocab_size: int) -> None:
    """The 27-token prefix needs the system prompt as 22 tokens and "user" as one."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    system = " ".join(_SYSTEM_SENTENCES)
    if len(sp.encode(system)) != 22 or len(sp.encode("user")) != 1:
        raise ValueError(f"vocab_size={vocab_size} is too small for prefix27=True; use at least 450")


def add_tokenizer_json(directory: Path | str) -> Path:
    """Add a tokenizer.json converted by the installed transformers (tests only: needs transformers >= 4.46)."""
    from transformers import GemmaTokenizerFast

    directory = Path(directory)
    tok = GemmaTokenizerFast.from_pretrained(str(directory))
    tok.backend_tokenizer.save(str(directory / "tokenizer.json"))
    return directory / "tokenizer.json"


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
