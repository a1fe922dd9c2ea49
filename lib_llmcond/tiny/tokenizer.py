"""A TINY Gemma-like SentencePiece tokenizer trained on the spot (about a second, no download).

Byte fallback, Gemma's special ids (pad 0, eos 1, bos 2, unk 3), ``<start_of_turn>``/``<end_of_turn>``, no dummy
prefix, whitespace kept. With ``prefix27=True`` the training text makes every word of the reference's system
prompt a single piece, so the default Gemma-3 system prefix is exactly 27 tokens, as with the real tokenizer.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from lib_llmcond.text.paths import GEMMA_SYSTEM_PROMPT

GEMMA_SPECIALS = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "\n\n", "\n"]

_WORDS = (
    "a girl with long silver hair stands in a field of flowers under a blue sky, looking at the viewer. "
    "masterpiece, best quality, 1girl, solo, red dress, smile, outdoors, night sky, stars, city lights. "
    "## Character 1\nA knight in shining armor holds a sword.\n## Scene\nA castle on a hill at sunset. "
    "The cat sleeps on the window sill; rain falls outside. Two friends share an umbrella in Tokyo. "
    "Portrait of an old man, oil painting, dramatic lighting, 85mm, bokeh, highly detailed, 4k. "
    "Красивый закат над морем. 夕焼けの海と猫。 Un chat noir sur un toit. Émilie à côté de l'église. "
)


def _corpus(prefix27: bool) -> list[str]:
    lines = [_WORDS] * 20
    if prefix27:
        lines += [f"user\n{GEMMA_SYSTEM_PROMPT}\n\n"] * 200
        lines += [" ".join(GEMMA_SYSTEM_PROMPT.split()) + " user model"] * 200
        lines += ["model\n"] * 200  # the trailer's "model" is one token too (5 trailer tokens, like Gemma-3)
    return lines


def write_tiny_gemma_tokenizer(
    directory: str | Path, *, vocab_size: int = 512, prefix27: bool = False
) -> Path:
    """Write ``tokenizer.model``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into ``directory``."""
    import sentencepiece as spm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(prefix27)),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        split_by_whitespace=True,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=GEMMA_SPECIALS,
        max_sentence_length=100000,
        num_threads=1,
        minloglevel=2,
    )
    if prefix27:
        _check_prefix27(model.getvalue(), vocab_size)
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "GemmaTokenizer",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "padding_side": "left",
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": 1000000,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    smap = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    (directory / "special_tokens_map.json").write_text(json.dumps(smap, indent=2), encoding="utf-8")
    return directory


def _check_prefix27(model: bytes, vocab_size: int) -> None:
    """The 27-token prefix needs the system prompt as 22 tokens and "user" as one; "model" is one as well."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model)
    if (
        len(sp.encode(GEMMA_SYSTEM_PROMPT)) != 22
        or len(sp.encode("user")) != 1
        or len(sp.encode("model")) != 1
    ):
        raise ValueError(f"vocab_size={vocab_size} is too small for prefix27=True; use at least 450")


def add_tokenizer_json(directory: str | Path) -> Path:
    """Add a tokenizer.json converted by the installed transformers (tests only: needs transformers >= 4.46)."""
    from transformers import GemmaTokenizerFast

    directory = Path(directory)
    GemmaTokenizerFast.from_pretrained(str(directory)).backend_tokenizer.save(
        str(directory / "tokenizer.json")
    )
    return directory / "tokenizer.json"
