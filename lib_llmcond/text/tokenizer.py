"""One tokenizer interface over ``tokenizers`` (tokenizer.json), ``sentencepiece`` (tokenizer.model) and byte-level
BPE vocabularies (vocab.json + merges.txt, rebuilt with ``tokenizers`` parts; Qwen).

Special tokens written in the text (``<bos>``, ``<start_of_turn>``...) become their ids; nothing is added
implicitly. Offsets are character spans of the input string: every piece of a multi-byte character
(SentencePiece byte fallback, byte-level BPE) carries the whole character's span, so neighbouring spans may
overlap but never split a character and are never empty.
"""

from __future__ import annotations

import itertools
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lib_llmcond.errors import ModelFileError

Span = tuple[int, int]
# JSON (the API) can carry half of a UTF-16 pair; no tokenizer accepts it. One U+FFFD each keeps offsets.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class TokenizedText:
    ids: list[int]
    offsets: list[Span]


@dataclass(frozen=True)
class SpecialTokens:
    bos: str | None = None
    eos: str | None = None
    pad: str | None = None
    padding_side: str = "left"
    add_bos: bool = False  # whether the model's own tokenizer adds <bos> to plain calls (T5Gemma path)


class Tokenizer(ABC):
    """Text -> ids with offsets. Subclasses implement :meth:`_encode_plain` and :meth:`token_id`.

    Offsets come in text order: their starts and their ends never decrease (the text paths rely on it)."""

    kind: str  # "tokenizers" | "sentencepiece" | "bytelevel-bpe": which files were read

    def __init__(self, special: SpecialTokens, special_strings: list[str]) -> None:
        self.special = special
        # first character -> [(length, tokens of that length)], longest first: a few set lookups per position
        groups: dict[str, dict[int, set[str]]] = {}
        for token in {s for s in special_strings if s}:
            groups.setdefault(token[0], {}).setdefault(len(token), set()).add(token)
        self._by_first = {c: sorted(g.items(), reverse=True) for c, g in groups.items()}
        # jumps straight to the next character that can start a special string (most text has none)
        self._first_chars = (
            re.compile("[" + "".join(re.escape(c) for c in sorted(groups)) + "]") if groups else None
        )
        self.padding_side = special.padding_side

    @abstractmethod
    def _encode_plain(self, text: str, base: int = 0) -> TokenizedText:
        """``text`` (no special strings) with offsets counted from ``base``."""

    @abstractmethod
    def token_id(self, token: str) -> int | None: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.token_id(token)

    @property
    def bos_id(self) -> int | None:
        return self._id(self.special.bos)

    @property
    def eos_id(self) -> int | None:
        return self._id(self.special.eos)

    @property
    def pad_id(self) -> int:
        pad = self._id(self.special.pad)
        return pad if pad is not None else (self.eos_id or 0)

    def _split_specials(self, text: str) -> list[str]:
        """[plain, special, plain, special, ..., plain]: special strings leftmost-longest, like ``re.split`` with
        one group, but indexed by first character (real Gemma files declare thousands of added tokens)."""
        out, start, i = [], 0, 0
        while self._first_chars is not None and (found := self._first_chars.search(text, i)):
            i = found.start()
            groups = self._by_first[text[i]]
            match = next((text[i : i + n] for n, g in groups if text[i : i + n] in g), None)
            if match is None:
                i += 1
                continue
            out += [text[start:i], match]
            i = start = i + len(match)
        out.append(text[start:])
        return out

    def encode(self, text: str, origin: int = 0) -> TokenizedText:
        """Ids and character spans of ``text``, counted from character ``origin`` (negative before it)."""
        ids: list[int] = []
        offsets: list[Span] = []
        pieces = self._split_specials(_LONE_SURROGATE.sub("\ufffd", text))
        pos = -origin
        for i, piece in enumerate(pieces):
            if not piece:
                continue
            special = self.token_id(piece) if i % 2 == 1 else None
            if special is not None:
                ids.append(special)
                offsets.append((pos, pos + len(piece)))
            else:
                enc = self._encode_plain(piece, pos)
                ids.extend(enc.ids)
                offsets.extend(enc.offsets)
            pos += len(piece)
        return TokenizedText(ids, offsets)


class HFTokenizer(Tokenizer):
    """A ``tokenizer.json`` through the ``tokenizers`` package (or a byte-level BPE rebuilt from its parts)."""

    def __init__(self, backend: Any, special: SpecialTokens, kind: str = "tokenizers") -> None:
        self._tok = backend
        self.kind = kind
        added = [t.content for t in _added_tokens(backend)]
        super().__init__(special, added + [s for s in (special.bos, special.eos, special.pad) if s])

    def _encode_plain(self, text: str, base: int = 0) -> TokenizedText:
        enc = self._tok.encode(text, add_special_tokens=False)
        return TokenizedText(list(enc.ids), [(base + s, base + e) for s, e in enc.offsets])

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))


def _added_tokens(backend: Any) -> list[Any]:
    try:
        return list(backend.get_added_tokens_decoder().values())
    except AttributeError:  # tokenizers < 0.14: read them from the serialized form
        data = json.loads(backend.to_str())

        class _T:
            def __init__(self, content: str) -> None:
                self.content = content

        return [_T(t["content"]) for t in data.get("added_tokens", [])]


class SPTokenizer(Tokenizer):
    """A SentencePiece ``tokenizer.model``; user-defined and control symbols are matched in the text."""

    def __init__(self, processor: Any, special: SpecialTokens, user_defined: list[str] | None = None) -> None:
        self._sp = processor
        self.kind = "sentencepiece"
        controls = [
            processor.id_to_piece(i)
            for i in range(processor.get_piece_size())
            if processor.is_control(i) or processor.is_unknown(i)
        ]
        super().__init__(special, controls + list(user_defined or []))

    def _encode_plain(self, text: str, base: int = 0) -> TokenizedText:
        ids = self._sp.encode(text, out_type=int)
        pieces = self._sp.id_to_piece(ids)
        if "".join(pieces).replace("\u2581", " ") == text:  # the pieces spell the text: spans by length
            bounds = list(itertools.accumulate(map(len, pieces), initial=base))
            return TokenizedText(ids, list(zip(bounds, bounds[1:])))
        enc = self._encode_by_proto(text)  # normalised text, byte fallback, unknown pieces
        return enc if not base else TokenizedText(enc.ids, [(base + s, base + e) for s, e in enc.offsets])

    def _encode_by_proto(self, text: str) -> TokenizedText:
        try:
            proto = self._sp.encode_as_proto(text)
        except ImportError:  # sentencepiece's proto output needs protobuf; walk the pieces instead
            return self._encode_by_pieces(text)
        byte_to_char = _byte_to_char(text)
        ids, offsets = [], []
        for piece in proto.pieces:
            ids.append(piece.id)
            start = byte_to_char[piece.begin]
            end = byte_to_char[piece.end] if piece.end > piece.begin else start
            if end == start and piece.end > piece.begin:
                end = start + 1  # a byte-fallback piece inside one multi-byte character
            offsets.append((start, max(end, start)))
        return TokenizedText(ids, _widen_byte_pieces(offsets))

    def _encode_by_pieces(self, text: str) -> TokenizedText:
        ids = list(self._sp.encode(text, out_type=int))
        offsets: list[Span] = []
        pos, pending = 0, b""
        for i in ids:
            piece = self._sp.id_to_piece(i)
            if self._sp.is_byte(i):
                pending += bytes([int(piece[3:-1], 16)])
                char_len = _utf8_len(pending[0])
                offsets.append((pos, pos + 1))
                if len(pending) >= char_len:
                    pos, pending = pos + 1, b""
                continue
            surface = piece.replace("\u2581", " ")
            n = len(surface) if text.startswith(surface, pos) else max(1, len(surface))
            offsets.append((pos, min(pos + n, len(text))))
            pos += n
        return TokenizedText(ids, offsets)

    def token_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        if i == self._sp.unk_id() and token != self._sp.id_to_piece(i):
            return None
        return int(i)

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())


def _with_model_specials(special: SpecialTokens, proc: Any) -> SpecialTokens:
    """bos/eos/pad that the config files do not name, taken from the SentencePiece model itself."""
    found = {}
    for name, i in (("bos", proc.bos_id()), ("eos", proc.eos_id()), ("pad", proc.pad_id())):
        if getattr(special, name) is None and i >= 0:
            found[name] = proc.id_to_piece(i)
    return replace(special, **found) if found else special


def _user_defined_pieces(model: bytes) -> list[str]:
    """User-defined pieces (``<start_of_turn>``...): `sentencepiece` has no query for them, so they are read from
    the model file itself."""
    from lib_llmcond.text.spm_model import USER_DEFINED, pieces_of_type

    try:  # the compiled protobuf parser when the installed protobuf can load sentencepiece's module (fast)
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        proto.ParseFromString(model)
        return [p.piece for p in proto.pieces if p.type == USER_DEFINED]
    except Exception:  # e.g. protobuf 3.20 (A1111): the pure-Python reader (~0.3 s for Gemma's 262k pieces)
        return pieces_of_type(model, USER_DEFINED)


def _byte_to_char(text: str) -> list[int] | range:
    """Map each UTF-8 byte index (and the end) to the index of the character containing it."""
    if text.isascii():  # one byte per character
        return range(len(text) + 1)
    table = []
    for ci, ch in enumerate(text):
        table.extend([ci] * len(ch.encode("utf-8")))
    table.append(len(text))
    return table


def _utf8_len(first: int) -> int:
    return 1 if first < 0x80 else 2 if first < 0xE0 else 3 if first < 0xF0 else 4


def _widen_byte_pieces(offsets: list[Span]) -> list[Span]:
    return [(s, e) if e > s else (s, s + 1) for s, e in offsets]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as e:
        raise ModelFileError(
            f"unreadable JSON ({e})", path=path, fix="re-download the tokenizer files"
        ) from e


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def read_special_tokens(directory: Path) -> SpecialTokens:
    cfg = _read_json(directory / "tokenizer_config.json")
    smap = _read_json(directory / "special_tokens_map.json")

    def pick(name: str, default: str | None) -> str | None:
        return _token_text(cfg.get(f"{name}_token")) or _token_text(smap.get(f"{name}_token")) or default

    return SpecialTokens(
        bos=pick("bos", None),
        eos=pick("eos", None),
        pad=pick("pad", None),
        padding_side=str(cfg.get("padding_side", "left")),
        add_bos=bool(cfg.get("add_bos_token", False)),
    )


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """``tokenizer.json`` when the installed ``tokenizers`` reads it, else ``tokenizer.model``."""
    directory = Path(directory)
    special = read_special_tokens(directory)
    errors = []
    if (directory / "tokenizer.json").is_file():
        try:
            from tokenizers import Tokenizer as Backend

            return HFTokenizer(Backend.from_file(str(directory / "tokenizer.json")), special)
        except Exception as e:  # an older tokenizers cannot parse newer files
            errors.append(f"tokenizer.json: {e}")
    if (directory / "tokenizer.model").is_file():
        try:
            import sentencepiece as spm

            data = (directory / "tokenizer.model").read_bytes()
            proc = spm.SentencePieceProcessor()
            proc.LoadFromSerializedProto(data)
            return SPTokenizer(proc, _with_model_specials(special, proc), _user_defined_pieces(data))
        except Exception as e:
            errors.append(f"tokenizer.model: {e}")
    try:
        bytelevel = _load_bytelevel(directory)
    except Exception as e:
        bytelevel = None
        errors.append(f"byte-level BPE: {e}")
    if bytelevel is not None:
        return HFTokenizer(bytelevel, special, kind="bytelevel-bpe")
    detail = "; ".join(errors) if errors else "no tokenizer.json, tokenizer.model or vocab.json + merges.txt"
    raise ModelFileError(
        f"no usable tokenizer ({detail})",
        path=directory,
        fix="copy the model's tokenizer files (tokenizer.json, tokenizer.model or vocab.json + merges.txt, "
        "with tokenizer_config.json) into this folder",
    )


def _load_bytelevel(directory: Path) -> Any | None:
    """A byte-level BPE (Qwen) rebuilt from vocab.json + merges.txt, or from a tokenizer.json that the installed
    `tokenizers` could not read; None when the folder has neither."""
    from lib_llmcond.text.bytelevel import build_bytelevel_tokenizer, read_bytelevel_files

    found = read_bytelevel_files(directory)
    if found is None:
        return None
    vocab, merges, pattern, added = found
    decoder = _read_json(directory / "tokenizer_config.json").get("added_tokens_decoder") or {}
    added = added + [dict(v, id=int(k)) for k, v in decoder.items()]
    return build_bytelevel_tokenizer(vocab, merges, added, pattern=pattern)
