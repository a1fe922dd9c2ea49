"""The tokenizer of a GGUF file, rebuilt from its metadata and cached on disk as ordinary tokenizer files.

SentencePiece vocabularies (``tokenizer.ggml.model`` = ``llama``/``gemma``: pieces, scores, piece types) become a
``tokenizer.model`` (a SentencePiece ModelProto written here field by field, so no ``protobuf`` is needed);
byte-level BPE vocabularies (``gpt2``: tokens + merges) become a ``tokenizer.json`` in the format every
``tokenizers`` since 0.13 reads. Either goes with a ``tokenizer_config.json`` into a cache directory keyed by the file's size, mtime and a hash of its header, and is
then loaded by :func:`lib_llmcond.text.tokenizer.load_tokenizer`. Decoding a 262k vocabulary happens once per file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

from lib_llmcond.encoders.gguf.reader import GGUFFile, open_gguf
from lib_llmcond.errors import ModelFileError
from lib_llmcond.text.tokenizer import Tokenizer, load_tokenizer

CACHE_ENV = "LLMCOND_CACHE"
CACHE_FORMAT = 2  # bump when the files written here change, so old caches are not reused
SPM_KINDS = {"llama", "gemma"}
BPE_KINDS = {"gpt2"}
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SPECIAL_KEYS = {"bos_token": "bos", "eos_token": "eos", "unk_token": "unknown", "pad_token": "padding"}


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llmcond")


def load_gguf_tokenizer(path: str | Path | GGUFFile, *, cache_dir: str | Path | None = None) -> Tokenizer:
    """The tokenizer stored in a GGUF file (first call per file writes it to the cache, later calls just load it)."""
    return load_tokenizer(gguf_tokenizer_dir(path, cache_dir=cache_dir))


def gguf_tokenizer_dir(path: str | Path | GGUFFile, *, cache_dir: str | Path | None = None) -> Path:
    gf = path if isinstance(path, GGUFFile) else open_gguf(path)
    target = Path(cache_dir or default_cache_dir()) / "gguf-tokenizers" / f"{gf.path.stem}-{file_key(gf)}"
    if (target / "tokenizer_config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        write_tokenizer_files(gf, tmp)
        with contextlib.suppress(OSError):  # another process won the race: its copy is equal
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def file_key(gf: GGUFFile) -> str:
    """Identity of the file for the cache: size, mtime and a hash of the header (all metadata, tensor directory)."""
    st = gf.path.stat()
    h = hashlib.sha256(f"{CACHE_FORMAT}:{st.st_size}:{st.st_mtime_ns}:".encode())
    h.update(memoryview(gf.data[: gf.data_offset]))
    return h.hexdigest()[:20]


def write_tokenizer_files(gf: GGUFFile, directory: Path) -> None:
    kind = str(gf.metadata.get("tokenizer.ggml.model", ""))
    tokens = gf.strings("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelFileError("the GGUF has no tokenizer vocabulary", path=gf.path, fix=_FIX)
    types = [int(t) for t in gf.metadata.get("tokenizer.ggml.token_type", [NORMAL] * len(tokens))]
    if kind in SPM_KINDS:
        scores = [float(s) for s in gf.metadata.get("tokenizer.ggml.scores", [0.0] * len(tokens))]
        (directory / "tokenizer.model").write_bytes(spm_model_proto(gf, tokens, scores, types))
        padding_side = "left"
    elif kind in BPE_KINDS:
        _write_json(directory / "tokenizer.json", bytelevel_tokenizer_json(gf, tokens, types))
        padding_side = "right"
    else:
        raise ModelFileError(f"unsupported GGUF tokenizer model {kind or '(none)'!r}", path=gf.path, fix=_FIX)
    _write_json(directory / "tokenizer_config.json", _tokenizer_config(gf, tokens, types, kind, padding_side))


_FIX = (
    "Use a GGUF exported by llama.cpp with its tokenizer (SentencePiece 'llama'/'gemma' or byte-level 'gpt2')"
)


def _tokenizer_config(
    gf: GGUFFile, tokens: list[str], types: list[int], kind: str, padding_side: str
) -> dict:
    config: dict = {"padding_side": padding_side}
    for key, meta in _SPECIAL_KEYS.items():
        i = gf.metadata.get(f"tokenizer.ggml.{meta}_token_id")
        if i is not None and 0 <= int(i) < len(tokens):
            config[key] = tokens[int(i)]
    config["add_bos_token"] = bool(gf.metadata.get("tokenizer.ggml.add_bos_token", kind in SPM_KINDS))
    config["add_eos_token"] = bool(gf.metadata.get("tokenizer.ggml.add_eos_token", False))
    return config


# --- byte-level BPE: pre-tokenizer split patterns by llama.cpp's ``tokenizer.ggml.pre`` ------------------------------

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# pre name -> (split regex, NFC normalization)
PRE_TOKENIZERS: dict[str, tuple[str, bool]] = {
    "qwen2": (_QWEN2_SPLIT, True),
    "gpt2": (_GPT2_SPLIT, False),
    "default": (_GPT2_SPLIT, False),
    "llama-bpe": (_LLAMA3_SPLIT, False),
}


def bytelevel_tokenizer_json(gf: GGUFFile, tokens: list[str], types: list[int]) -> dict:
    pre = str(gf.metadata.get("tokenizer.ggml.pre", "default"))
    if pre not in PRE_TOKENIZERS:
        raise ModelFileError(
            f"unsupported byte-level pre-tokenizer {pre!r}",
            path=gf.path,
            fix=f"llmcond reads GGUF BPE tokenizers of kinds: {', '.join(sorted(PRE_TOKENIZERS))}",
        )
    pattern, nfc = PRE_TOKENIZERS[pre]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    added = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": ty == CONTROL,
        }
        for i, (t, ty) in enumerate(zip(tokens, types))
        if ty in (CONTROL, USER_DEFINED)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"} if nfc else None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
                byte_level,
            ],
        },
        "post_processor": None,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": gf.strings("tokenizer.ggml.merges"),
        },
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


# --- a SentencePiece ModelProto, written by hand (sentencepiece_model.proto field numbers) --------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 ids are sign-extended to 10 bytes, as protobuf does
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _int_field(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(int(value))


def _float_field(field: int, value: float) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<f", value)


def spm_model_proto(gf: GGUFFile, tokens: list[str], scores: list[float], types: list[int]) -> bytes:
    """A BPE SentencePiece model equivalent to the vocabulary llama.cpp exported from one.

    Two repairs: llama.cpp marks ``<unk>`` as a control token (SentencePiece wants type UNKNOWN), and user-defined
    pieces made of spaces ("  ", "   "...) are written with "▁". SentencePiece escapes spaces before it matches
    user-defined pieces, so a raw-space piece could never match; HF's Gemma tokenizer (the reference's) matches
    those runs as single tokens, and the escaped spelling makes SentencePiece do the same.
    """
    meta = gf.metadata.get
    unk = meta("tokenizer.ggml.unknown_token_id")
    pieces = []
    for i, (t, s, ty) in enumerate(zip(tokens, scores, types)):
        ty = UNKNOWN if unk is not None and i == int(unk) else (ty or NORMAL)
        if ty == USER_DEFINED and " " in t:
            t = t.replace(" ", "\u2581")
        pieces.append(
            _len_field(1, _len_field(1, t.encode("utf-8")) + _float_field(2, s) + _int_field(3, ty))
        )

    def special(name: str, default: int) -> int:
        value = meta(f"tokenizer.ggml.{name}_token_id")
        return default if value is None else int(value)

    trainer = b"".join(
        [
            _int_field(3, 2),  # model_type = BPE
            _int_field(4, len(tokens)),  # vocab_size
            _int_field(35, int(BYTE in types)),  # byte_fallback
            _int_field(40, special("unknown", 0)),
            _int_field(41, special("bos", -1)),
            _int_field(42, special("eos", -1)),
            _int_field(43, special("padding", -1)),
        ]
    )
    normalizer = b"".join(
        [
            _len_field(1, b"identity"),
            _int_field(3, int(bool(meta("tokenizer.ggml.add_space_prefix", True)))),  # add_dummy_prefix
            _int_field(4, 0),  # remove_extra_whitespaces
            _int_field(5, 1),  # escape_whitespaces
        ]
    )
    return b"".join(pieces) + _len_field(2, trainer) + _len_field(3, normalizer)
