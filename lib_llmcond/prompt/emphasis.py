"""The hosts' emphasis grammar, and clean text with weighted character spans for the LLM.

``parse_prompt_attention`` gives the same ``(text, weight)`` list as the WebUIs' function of that name
(``modules/prompt_parser.py``), float for float: segments are built in the same order and multiplied in the
same order. Where the host raises (a weight such as ``(a:1.2.3)`` that ``float()`` rejects), we read the
``:1.2.3`` as literal text and the ``)`` as a plain closer instead.

``parse_prompt`` turns a prompt into what the LLM reads: the clean text (brackets removed, escapes
unescaped, ``BREAK`` pieces joined as paragraphs) plus the character spans of that text whose weight is not
1.0, and the ``BREAK``-separated pieces for the "separate blocks" mode. It never raises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

Syntax = Literal["full", "weights_only", "none"]
SYNTAXES: tuple[str, ...] = ("full", "weights_only", "none")

ROUND = 1.1
SQUARE = 1 / 1.1
BREAK = "BREAK"
BREAK_WEIGHT = -1.0
PARAGRAPH = "\n\n"
MIN_WEIGHT = (
    0.01  # weights given to the LLM path are clamped here: a zero or negative scale only destroys tokens
)

_ESCAPABLE = "()[]\\"
_SPECIAL = "\\()[]:"
_WEIGHT_CLOSE = re.compile(r":\s*([+-]?[.\d]+)\s*\)")  # the hosts allow spaces around the number
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*")


class Span(NamedTuple):
    """Characters ``[start, end)`` of a clean text read with ``weight`` (a tuple: ``s, e, w = span`` works)."""

    start: int
    end: int
    weight: float


@dataclass(frozen=True)
class Piece:
    """A text given to the LLM on its own, with its weighted spans (offsets into ``text``).

    ``start``: where the piece begins in the text it was cut from (``split_for_budget``), else 0.
    """

    text: str
    spans: tuple[Span, ...] = ()
    start: int = 0


@dataclass(frozen=True)
class ParsedPrompt:
    """The result of ``parse_prompt``.

    ``text`` is the clean text of the "paragraphs" BREAK mode (pieces joined by a blank line) and ``spans`` its
    weighted spans (only weights other than 1.0; everything else weighs 1.0). ``pieces`` are the BREAK-separated
    parts for the "separate blocks" mode (at least one, maybe empty). ``warnings`` name weights we replaced.
    """

    source: str
    syntax: str
    text: str
    spans: tuple[Span, ...]
    pieces: tuple[Piece, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def has_weights(self) -> bool:
        return bool(self.spans)

    @property
    def has_break(self) -> bool:
        return len(self.pieces) > 1


# --- the hosts' grammar -------------------------------------------------------------------------------------


def _lex_full(text: str) -> Iterator[tuple[str, str]]:
    """Tokens of the hosts' grammar as (kind, value): kinds esc, open_r, open_s, weight, close_r, close_s, text."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 < n and text[i + 1] in _ESCAPABLE:
                yield "esc", text[i + 1]
                i += 2
            else:  # a lone backslash: the host drops it (an empty literal)
                yield "esc", ""
                i += 1
        elif c == "(":
            yield "open_r", c
            i += 1
        elif c == "[":
            yield "open_s", c
            i += 1
        elif c == ":":
            m = _WEIGHT_CLOSE.match(text, i)
            if m:
                yield "weight", m.group(0)
                i = m.end()
            else:
                yield "text", c
                i += 1
        elif c == ")":
            yield "close_r", c
            i += 1
        elif c == "]":
            yield "close_s", c
            i += 1
        else:
            j = i + 1
            while j < n and text[j] not in _SPECIAL:
                j += 1
            yield "text", text[i:j]
            i = j


def _as_float(number: str) -> float | None:
    try:
        return float(number)
    except ValueError:
        return None


def _segments_full(text: str) -> list[list]:
    """Unmerged [text, weight, is_break] segments of the hosts' grammar, multiplied in the hosts' order."""
    segs: list[list] = []
    rounds: list[int] = []
    squares: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for seg in segs[start:]:
            seg[1] *= factor

    def add_text(value: str) -> None:
        for k, part in enumerate(_BREAK_SPLIT.split(value)):
            if k:
                segs.append([BREAK, BREAK_WEIGHT, True])
            segs.append([part, 1.0, False])

    for kind, value in _lex_full(text):
        if kind == "esc":
            segs.append([value, 1.0, False])
        elif kind == "open_r":
            rounds.append(len(segs))
        elif kind == "open_s":
            squares.append(len(segs))
        elif kind == "weight" and rounds:
            factor = _as_float(value[1:-1])
            if factor is None:  # the host raises here; we keep ":..." as text and close the bracket
                add_text(value[:-1])
                scale_from(rounds.pop(), ROUND)
            else:
                scale_from(rounds.pop(), factor)
        elif kind == "close_r" and rounds:
            scale_from(rounds.pop(), ROUND)
        elif kind == "close_s" and squares:
            scale_from(squares.pop(), SQUARE)
        else:
            add_text(value)
    for start in rounds:
        scale_from(start, ROUND)
    for start in squares:
        scale_from(start, SQUARE)
    if not segs:
        segs.append(["", 1.0, False])
    return segs


def _merge(segs: list[list]) -> list[list]:
    out: list[list] = []
    for seg in segs:
        if out and out[-1][1] == seg[1]:
            out[-1][0] += seg[0]
            out[-1][2] = out[-1][2] and seg[2]
        else:
            out.append(list(seg))
    return out


def parse_prompt_attention(text: str) -> list[list]:
    """The hosts' ``parse_prompt_attention``: ``[text, weight]`` pairs, ``["BREAK", -1.0]`` between BREAK pieces.

    Same results as the host's function, including its quirks: a lone backslash vanishes, a ``BREAK`` inside
    brackets gets the brackets' factor on its -1 marker (so the host reads it as the word, not a break).
    """
    return [[s[0], s[1]] for s in _merge(_segments_full(text))]


def parse_weights_only(text: str) -> list[list]:
    """``[text, weight]`` pairs of the "weights only" syntax, merged like the hosts' (BREAK markers included)."""
    return [[s[0], s[1]] for s in _merge(_segments_weights_only(text))]


# --- "weights only": (text:1.2) counts, bare brackets are text -------------------------------------------------


def _segments_weights_only(text: str) -> list[list]:
    """[text, weight, is_break] segments where only ``( ... :w)`` groups weigh; escapes still unescape."""
    items: list[str] = []  # literal text items, in order
    groups: list[tuple[int, int, float]] = []  # (first item, end item, factor)
    opens: list[int] = []  # item index of each "(" still open; -(index+1) marks its literal "(" item
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in _ESCAPABLE:
            items.append(text[i + 1])
            i += 2
            continue
        if c == "(":
            opens.append(len(items))
            items.append("(")
            i += 1
            continue
        m = _WEIGHT_CLOSE.match(text, i) if c == ":" else None
        factor = _as_float(m.group(1)) if m else None
        if m and factor is not None and opens:
            start = opens.pop()
            items[start] = ""  # the "(" of a weighted group is syntax, not text
            groups.append((start + 1, len(items), factor))
            i = m.end()
            continue
        if c == ")" and opens:
            opens.pop()  # a literal pair such as "ganyu_(genshin_impact)"
        items.append(c)
        i += 1
    weights = [1.0] * len(items)
    for first, end, factor in groups:  # inner groups close first, as in the hosts' order
        for k in range(first, end):
            weights[k] *= factor
    segs: list[list] = []
    for value, weight in zip(items, weights):
        if segs and segs[-1][1] == weight:
            segs[-1][0] += value
        else:
            segs.append([value, weight, False])
    out: list[list] = []
    for value, weight, _ in segs:
        for k, part in enumerate(_BREAK_SPLIT.split(value)):
            if k:
                out.append([BREAK, BREAK_WEIGHT, True])
            out.append([part, weight, False])
    return out or [["", 1.0, False]]


# --- clean text and spans -----------------------------------------------------------------------------------


def _build_piece(segs: list[list]) -> Piece:
    """Concatenate [text, weight] segments, strip the ends, and keep spans of weight != 1.0."""
    text = "".join(s[0] for s in segs)
    lead = len(text) - len(text.lstrip())
    clean = text.strip()
    spans: list[Span] = []
    pos = -lead
    for value, weight, _ in segs:
        start, end = max(pos, 0), min(pos + len(value), len(clean))
        pos += len(value)
        if end <= start or weight == 1.0:
            continue
        if spans and spans[-1].end == start and spans[-1].weight == weight:
            spans[-1] = Span(spans[-1].start, end, weight)
        else:
            spans.append(Span(start, end, weight))
    return Piece(clean, tuple(spans))


def _sanitize(segs: list[list]) -> tuple[list[list], list[str]]:
    """Non-finite weights become 1.0, weights below ``MIN_WEIGHT`` become ``MIN_WEIGHT`` (with a warning)."""
    warnings = []
    for seg in segs:
        if seg[2] or not seg[0]:
            continue
        if not math.isfinite(seg[1]):
            warnings.append(f"weight {seg[1]} of {seg[0][:30]!r} is not a finite number; using 1.0")
            seg[1] = 1.0
        elif seg[1] < MIN_WEIGHT:
            warnings.append(f"weight {seg[1]} of {seg[0][:30]!r} is below {MIN_WEIGHT}; using {MIN_WEIGHT}")
            seg[1] = MIN_WEIGHT
    return segs, warnings


def join_pieces(pieces: list[Piece] | tuple[Piece, ...], sep: str = PARAGRAPH) -> Piece:
    """Pieces as one text (paragraphs by default), spans shifted into it."""
    texts, spans, pos = [], [], 0
    for piece in pieces:
        if texts:
            texts.append(sep)
            pos += len(sep)
        texts.append(piece.text)
        spans.extend(Span(s.start + pos, s.end + pos, s.weight) for s in piece.spans)
        pos += len(piece.text)
    return Piece("".join(texts), tuple(spans))


def parse_prompt(text: str, *, syntax: str = "full") -> ParsedPrompt:
    """Clean text, weighted spans and BREAK pieces of a prompt; never raises.

    ``syntax``: ``"full"`` (the hosts' grammar), ``"weights_only"`` (only ``(text:1.2)``; bare brackets are
    text), ``"none"`` (the text as it is, only stripped, like the reference's ``prompt.strip()``). A ``BREAK``
    is a break wherever it stands (the host reads one inside brackets as the word "BREAK"). Weights below
    ``MIN_WEIGHT`` (zero, negative) are raised to it, non-finite ones become 1.0 (``warnings`` says so). Whitespace-only
    pieces are dropped (one empty piece remains for an empty prompt). Unknown syntaxes read as ``"full"``.
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if syntax == "none":
        piece = Piece(text.strip())
        return ParsedPrompt(text, syntax, piece.text, (), (piece,))
    raw = _segments_weights_only(text) if syntax == "weights_only" else _segments_full(text)
    segs, warnings = _sanitize(raw)
    groups: list[list[list]] = [[]]
    for seg in segs:
        if seg[2]:
            groups.append([])
        else:
            groups[-1].append(seg)
    pieces = [p for p in (_build_piece(g) for g in groups) if p.text] or [Piece("")]
    joined = join_pieces(pieces)
    return ParsedPrompt(text, syntax, joined.text, joined.spans, tuple(pieces), tuple(warnings))
