"""The WebUI hosts' emphasis grammar, giving the LLM clean text plus weighted character spans.

Grammar (A1111 ``prompt_parser.parse_prompt_attention``): ``\\( \\) \\[ \\] \\\\`` are literal; ``(x)`` multiplies
by 1.1, ``[x]`` by 1/1.1, ``(x:1.3)`` by 1.3; nesting multiplies; unmatched closers are text; unclosed openers
apply to the end; the uppercase word ``BREAK`` splits the prompt; neighbours of equal weight merge.

Syntaxes: ``full`` (the hosts' grammar), ``weights_only`` (only ``(text:1.2)`` counts; bare brackets stay text,
for booru tags like ``ganyu_(genshin_impact)`` and Markdown ``[links]``), ``none`` (raw text, no BREAK).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SYNTAXES = ("full", "weights_only", "none")
BREAK = "BREAK"
PARAGRAPH = "\n\n"
MIN_WEIGHT = (
    0.01  # spans given to the LLM path are clamped here: a zero or negative scale only destroys tokens
)

_TOKEN = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\]|\\\\|\\   # escapes (and a lone backslash)
    |\(|\[                        # openers
    |:\s*([+-]?[.\d]+)\s*\)       # a weight closing a round bracket
    |\)|]                         # closers
    |[^\\()\[\]:]+                # plain text
    |:                            # a colon that is not a weight
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")

Span = tuple[int, int, float]


@dataclass(frozen=True)
class Piece:
    """Clean text and its weighted spans (``(start, end, weight)``, weight != 1 only)."""

    text: str
    spans: tuple[Span, ...] = ()


@dataclass(frozen=True)
class ParsedPrompt:
    text: str  # the pieces joined as paragraphs: what the LLM reads in the default BREAK mode
    spans: tuple[Span, ...]
    pieces: tuple[Piece, ...] = field(default_factory=tuple)

    @property
    def has_weights(self) -> bool:
        return bool(self.spans)


def _multiply(res: list[list], start: int, factor: float) -> None:
    for p in range(start, len(res)):
        res[p][1] *= factor


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def _append_text(res: list[list], text: str, split_break: bool) -> None:
    parts = _BREAK.split(text) if split_break else [text]
    for i, part in enumerate(parts):
        if i > 0:
            res.append([BREAK, -1.0])
        res.append([part, 1.0])


def parse_prompt_attention(text: str) -> list[list]:
    """``[[text, weight], ...]`` exactly as the hosts' parser returns it (``["BREAK", -1]`` between pieces)."""
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []
    for m in _TOKEN.finditer(text):
        token, weight = m.group(0), m.group(1)
        value = _float(weight) if weight is not None else None
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif value is not None and round_open:
            _multiply(res, round_open.pop(), value)
        elif token == ")" and round_open:
            _multiply(res, round_open.pop(), 1.1)
        elif token == "]" and square_open:
            _multiply(res, square_open.pop(), 1 / 1.1)
        else:
            _append_text(res, token, split_break=True)
    for pos in round_open:
        _multiply(res, pos, 1.1)
    for pos in square_open:
        _multiply(res, pos, 1 / 1.1)
    return _merge(res)


def parse_weights_only(text: str) -> list[list]:
    """Only ``(text:w)`` applies a weight; other brackets are kept as text. BREAK still splits."""
    res: list[list] = []
    round_open: list[int] = []  # index of the literal "(" placeholder in res
    for m in _TOKEN.finditer(text):
        token, weight = m.group(0), m.group(1)
        value = _float(weight) if weight is not None else None
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(res))
            res.append(["(", 1.0])
        elif value is not None and round_open:
            start = round_open.pop()
            res[start][0] = ""  # the opener was syntax after all
            _multiply(res, start, value)
        elif token == ")" and round_open:
            round_open.pop()
            res.append([")", 1.0])
        else:
            _append_text(res, token, split_break=True)
    return _merge(res)


def _merge(res: list[list]) -> list[list]:
    if not res:
        return [["", 1.0]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


def _pieces(parsed: list[list]) -> list[Piece]:
    pieces: list[Piece] = []
    text, spans = "", []
    for chunk, weight in parsed:
        if weight == -1.0 and chunk == BREAK:
            pieces.append(Piece(text, tuple(spans)))
            text, spans = "", []
            continue
        if weight != 1.0 and chunk:
            spans.append((len(text), len(text) + len(chunk), max(float(weight), MIN_WEIGHT)))
        text += chunk
    pieces.append(Piece(text, tuple(spans)))
    return pieces


def join_pieces(pieces: list[Piece]) -> tuple[str, tuple[Span, ...]]:
    """The pieces as paragraphs of one text, spans moved accordingly (empty pieces are skipped)."""
    text, spans = "", []
    for piece in pieces:
        if not piece.text:
            continue
        if text:
            text += PARAGRAPH
        spans.extend((s + len(text), e + len(text), w) for s, e, w in piece.spans)
        text += piece.text
    return text, tuple(spans)


def parse_prompt(text: str, *, syntax: str = "full") -> ParsedPrompt:
    """Clean text, weighted spans and BREAK pieces of a prompt. Never raises on any text."""
    if syntax not in SYNTAXES:
        raise ValueError(f"syntax must be one of {SYNTAXES}, not {syntax!r}")
    if syntax == "none":
        return ParsedPrompt(text, (), (Piece(text),))
    parsed = parse_prompt_attention(text) if syntax == "full" else parse_weights_only(text)
    pieces = _pieces(parsed)
    joined, spans = join_pieces(pieces)
    return ParsedPrompt(joined, spans, tuple(pieces))
