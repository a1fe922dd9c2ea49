"""One tokenizer interface over `tokenizers` (tokenizer.json), `sentencepiece` (tokenizer.model) and byte-level BPE
vocabularies (vocab.json + merges.txt).

Offsets are character spans (``str`` indices) of the input text. One character may be split over several tokens
(byte-fallback pieces of SentencePiece, byte-level BPE pieces of Qwen): every such token then carries the span of the
whole character, so spans of neighbouring tokens may overlap but never point inside a character and never are empty
for a token that stands for text. Special tokens written in the text (``<bos>``, ``<start_of_turn>``,
``<|im_start|>``...) become their ids and carry the span of their text. ``encode`` never adds special tokens; use
``add_bos``/``add_eos`` for what the tokenizer would add by itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lib_llmcond.errors import ModelFileError

Span = tuple[int, int]

_FIX = (
    "Put the model's tokenizer files (tokenizer.json, or tokenizer.model, or vocab.json + merges.txt, with "
    "tokenizer_config.json) next to its weights, as downloaded from the model's page"
)


@dataclass(frozen=True)
class TokenizedText:
    ids: list[int]
    offsets: list[Span]  # character spans in the input text


class _Backend(Protocol):
    vocab_size: int

    def encode(self, text: str) -> tuple[list[int], list[Span]]: ...

    def token_id(self, token: str) -> int | None: ...


class Tokenizer:
    """A loaded tokenizer. Build it with :func:`load_tokenizer`."""

    def __init__(self, backend: _Backend, config: dict, *, directory: Path, kind: str) -> None:
        self._backend = backend
        self.directory = directory
        self.kind = kind  # "tokenizers" | "sentencepiece" | "bytelevel-bpe"
        self.vocab_size = backend.vocab_size
        self.bos_id = self._special_id(config, "bos_token")
        self.eos_id = self._special_id(config, "eos_token")
        self.unk_id = self._special_id(config, "unk_token")
        pad = self._special_id(config, "pad_token")
        self.pad_id: int = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)
        self.padding_side: str = config.get("padding_side") or "right"
        self.add_bos: bool = _adds(config, "add_bos_token", directory) and self.bos_id is not None
        self.add_eos: bool = _adds(config, "add_eos_token", directory) and self.eos_id is not None

    def _special_id(self, config: dict, key: str) -> int | None:
        """From the config files, else from the model file itself (SentencePiece records bos/eos/pad/unk)."""
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            return self.token_id(value)
        return getattr(self._backend, "model_specials", {}).get(key)

    def encode(self, text: str) -> TokenizedText:
        ids, offsets = self._backend.encode(text)
        return TokenizedText(ids=list(ids), offsets=[(int(a), int(b)) for a, b in offsets])

    def token_id(self, token: str) -> int | None:
        return self._backend.token_id(token)

    def __repr__(self) -> str:
        return (
            f"Tokenizer({self.kind}, {self.directory}, vocab={self.vocab_size}, pad side={self.padding_side})"
        )


def _adds(config: dict, key: str, directory: Path) -> bool:
    """Whether the tokenizer adds bos/eos by itself: tokenizer_config.json, else the default of its transformers
    class (Gemma/Llama tokenizers add <bos>), else the post-processor template of tokenizer.json."""
    if key in config:
        return bool(config[key])
    if key == "add_bos_token" and any(
        n in str(config.get("tokenizer_class", "")) for n in ("Gemma", "Llama")
    ):
        return True
    path = directory / "tokenizer.json"
    if not path.is_file():
        return False
    try:
        post = json.loads(path.read_text(encoding="utf-8")).get("post_processor") or {}
    except (OSError, ValueError):
        return False
    single = post.get("single") or []
    ends = single[:1] if key == "add_bos_token" else single[-1:]
    return any("SpecialToken" in item for item in ends)


# --- backends -------------------------------------------------------------------------------------------------


class _TokenizersBackend:
    """`tokenizers.Tokenizer`; it splits out added/special tokens itself and reports character offsets."""

    def __init__(self, tok) -> None:  # tok: tokenizers.Tokenizer
        self._tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> tuple[list[int], list[Span]]:
        enc = self._tok.encode(text, add_special_tokens=False)
        return list(enc.ids), list(enc.offsets)

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)


class _SentencePieceBackend:
    """`sentencepiece` with special tokens split out first (SentencePiece does not read control tokens in text)."""

    def __init__(self, sp, specials: dict[str, int]) -> None:
        self._sp = sp
        self.vocab_size = sp.get_piece_size()
        self._specials = specials
        self._by_first = _index_by_first_char(specials)
        ids = {
            "bos_token": sp.bos_id(),
            "eos_token": sp.eos_id(),
            "pad_token": sp.pad_id(),
            "unk_token": sp.unk_id(),
        }
        self.model_specials = {k: v for k, v in ids.items() if v >= 0}

    def token_id(self, token: str) -> int | None:
        if token in self._specials:
            return self._specials[token]
        i = self._sp.piece_to_id(token)
        return None if i == self._sp.unk_id() and token != self._sp.id_to_piece(i) else i

    def encode(self, text: str) -> tuple[list[int], list[Span]]:
        ids: list[int] = []
        offsets: list[Span] = []
        pos = 0
        for start, token in _find_specials(text, self._by_first):
            self._encode_plain(text[pos:start], pos, ids, offsets)
            ids.append(self._specials[token])
            offsets.append((start, start + len(token)))
            pos = start + len(token)
        self._encode_plain(text[pos:], pos, ids, offsets)
        return ids, offsets

    def _encode_plain(self, text: str, base: int, ids: list[int], offsets: list[Span]) -> None:
        if not text:
            return
        starts = _char_starts_by_byte(text)
        for piece in _sp_pieces(self._sp, text):
            a, b = piece.begin, piece.end
            first = starts[a] if a < len(starts) else len(text)
            last = _char_end(starts, b - 1) if b > a else first + 1
            ids.append(piece.id)
            offsets.append((base + first, base + min(last, len(text))))


def _index_by_first_char(tokens) -> dict[str, list[str]]:
    """Special tokens grouped by first character, longest first (real Gemma files have thousands of them)."""
    index: dict[str, list[str]] = {}
    for token in sorted(tokens, key=len, reverse=True):
        index.setdefault(token[0], []).append(token)
    return index


def _find_specials(text: str, by_first: dict[str, list[str]]):
    """(start, token) of special tokens in ``text``, leftmost-longest, non-overlapping."""
    i = 0
    while i < len(text):
        match = next((t for t in by_first.get(text[i], ()) if text.startswith(t, i)), None)
        if match:
            yield i, match
            i += len(match)
        else:
            i += 1


def _sp_pieces(sp, text: str):
    try:
        return sp.encode(text, out_type="proto").pieces
    except (TypeError, ValueError):  # sentencepiece < 0.2
        return sp.encode(text, out_type="immutable_proto").pieces


def _char_starts_by_byte(text: str) -> list[int]:
    """For each UTF-8 byte of ``text``, the index of the character it belongs to."""
    out: list[int] = []
    for i, ch in enumerate(text):
        out.extend([i] * len(ch.encode("utf-8")))
    return out


def _char_end(starts: list[int], last_byte: int) -> int:
    return starts[min(last_byte, len(starts) - 1)] + 1


# --- loading --------------------------------------------------------------------------------------------------


def load_tokenizer(directory: Path | str) -> Tokenizer:
    """Load the tokenizer of a model directory: tokenizer.json through `tokenizers` when the installed version can
    read it, else tokenizer.model through `sentencepiece`, else a byte-level BPE vocabulary (vocab.json +
    merges.txt, or the vocabulary inside a tokenizer.json that `tokenizers` could not read)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelFileError("tokenizer directory not found", path=directory, fix=_FIX)
    config = _read_config(directory)
    errors: list[str] = []
    for kind, build in (
        ("tokenizers", _try_tokenizers),
        ("sentencepiece", _try_sentencepiece),
        ("bytelevel-bpe", _try_bytelevel),
    ):
        try:
            backend = build(directory, config)
        except Exception as exc:  # an unreadable file of one kind: try the next kind
            errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            continue
        if backend is not None:
            return Tokenizer(backend, config, directory=directory, kind=kind)
    why = "; ".join(errors) if errors else "no tokenizer.json, tokenizer.model or vocab.json + merges.txt"
    raise ModelFileError(f"no readable tokenizer ({why})", path=directory, fix=_FIX)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read JSON ({exc})", path=path, fix=_FIX) from exc


def _read_config(directory: Path) -> dict:
    """tokenizer_config.json with special_tokens_map.json filling what it lacks."""
    config: dict = {}
    smap = directory / "special_tokens_map.json"
    if smap.is_file():
        config.update(_read_json(smap))
    tcfg = directory / "tokenizer_config.json"
    if tcfg.is_file():
        config.update({k: v for k, v in _read_json(tcfg).items() if v is not None})
    return config


def _added_tokens(config: dict) -> list[dict]:
    """Added tokens of tokenizer_config.json (``added_tokens_decoder``) as dicts with id, content, flags."""
    decoder = config.get("added_tokens_decoder") or {}
    return [dict(v, id=int(k)) for k, v in sorted(decoder.items(), key=lambda kv: int(kv[0]))]


def _try_tokenizers(directory: Path, config: dict) -> _Backend | None:
    path = directory / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer as HFTokenizer

    return _TokenizersBackend(HFTokenizer.from_file(str(path)))


def _try_sentencepiece(directory: Path, config: dict) -> _Backend | None:
    path = directory / "tokenizer.model"
    if not path.is_file():
        return None
    import sentencepiece as spm

    from lib_llmcond.text.spm_model import CONTROL, UNKNOWN, USER_DEFINED, piece_types

    data = path.read_bytes()
    sp = spm.SentencePieceProcessor()
    sp.load_from_serialized_proto(data)
    specials = {p: i for i, (p, t) in enumerate(piece_types(data)) if t in (CONTROL, UNKNOWN, USER_DEFINED)}
    for tok in _added_tokens(config):
        specials[tok["content"]] = tok["id"]
    return _SentencePieceBackend(sp, {k: v for k, v in specials.items() if k})


def _try_bytelevel(directory: Path, config: dict) -> _Backend | None:
    from lib_llmcond.text.bytelevel import build_bytelevel_tokenizer, read_bytelevel_files

    found = read_bytelevel_files(directory)
    if found is None:
        return None
    vocab, merges, pattern, added = found
    added = added + _added_tokens(config)
    return _TokenizersBackend(build_bytelevel_tokenizer(vocab, merges, added, pattern=pattern))
