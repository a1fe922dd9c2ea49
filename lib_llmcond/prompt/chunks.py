"""Long prompts: where the adapter's 512-token budget cuts a prompt, and splitting it into pieces that fit.

Pieces end at the last boundary before the limit, preferring a Markdown heading, then a paragraph, a line, a
sentence, a comma and finally a space; never inside a word or an emphasis span.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Span = tuple[int, int, float]

# boundary kinds, best first: a piece may end right before these matches
BOUNDARIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("heading", re.compile(r"\n(?=#{1,6}\s)")),
    ("paragraph", re.compile(r"\n\s*\n")),
    ("line", re.compile(r"\n")),
    ("sentence", re.compile(r"(?<=[.!?。！？])\s+")),
    ("comma", re.compile(r"(?<=[,;、，；])\s*")),
    ("space", re.compile(r"\s+")),
)
MIN_FILL = 0.5  # a boundary is taken only if the piece uses at least this share of what would fit


@dataclass(frozen=True)
class Piece:
    text: str
    spans: tuple[Span, ...]
    start: int  # character offset of the piece in the whole text


@dataclass(frozen=True)
class CutInfo:
    token_index: int  # the first token that does not reach the adapter
    word: str
    snippet: str

    def describe(self) -> str:
        return f"cut at token {self.token_index} near {self.snippet!r}"


def _inside_span(pos: int, spans: Sequence[Span]) -> bool:
    return any(a < pos < b for a, b, _ in spans)


def _inside_word(text: str, pos: int) -> bool:
    return 0 < pos < len(text) and text[pos - 1].isalnum() and text[pos].isalnum()


def _candidates(text: str, spans: Sequence[Span]) -> list[tuple[int, int]]:
    """(end position, kind rank) of every allowed piece end."""
    out = []
    for rank, (_, pattern) in enumerate(BOUNDARIES):
        for m in pattern.finditer(text):
            pos = m.start()
            if 0 < pos < len(text) and not _inside_span(pos, spans) and not _inside_word(text, pos):
                out.append((pos, rank))
    return out


def _largest_fitting(text: str, ends: list[int], fits: Callable[[str], bool]) -> int | None:
    lo, hi, best = 0, len(ends) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(text[: ends[mid]]):
            best, lo = ends[mid], mid + 1
        else:
            hi = mid - 1
    return best


def _cut_point(text: str, spans: Sequence[Span], count: Callable[[str], int], budget: int) -> int:
    candidates = _candidates(text, spans)
    ends = sorted({p for p, _ in candidates})
    limit = _largest_fitting(text, ends, lambda s: count(s) <= budget)
    if limit is None:  # not even the first boundary fits: cut inside the first overlong word
        return max(1, _largest_fitting(text, list(range(1, len(text))), lambda s: count(s) <= budget) or 1)
    for rank in range(len(BOUNDARIES)):
        best = max((p for p, r in candidates if r == rank and p <= limit), default=None)
        if best is not None and best >= MIN_FILL * limit:
            return best
    return limit


def _piece(text: str, spans: Sequence[Span], a: int, b: int) -> Piece:
    raw = text[a:b]
    lead = len(raw) - len(raw.lstrip())
    body = raw.strip()
    start = a + lead
    moved = tuple(
        (max(s, start) - start, min(e, start + len(body)) - start, w)
        for s, e, w in spans
        if s < start + len(body) and e > start
    )
    return Piece(body, moved, start)


def split_for_budget(
    text: str, spans: Sequence[Span], count_tokens: Callable[[str], int], budget: int
) -> list[Piece]:
    """Pieces of ``text`` each counting at most ``budget`` tokens (one piece when it already fits)."""
    pieces: list[Piece] = []
    pos = 0
    while True:
        rest = text[pos:]
        rest_spans = [(s - pos, e - pos, w) for s, e, w in spans if e > pos]
        if count_tokens(rest) <= budget or not rest.strip():
            last = _piece(text, spans, pos, len(text))
            if last.text or not pieces:
                pieces.append(last)
            return pieces
        cut = _cut_point(rest, rest_spans, count_tokens, budget)
        piece = _piece(text, spans, pos, pos + cut)
        if piece.text:
            pieces.append(piece)
        pos += cut


def cut_report(
    text: str, offsets: Sequence[tuple[int, int] | None], n_kept: int, context: int = 24
) -> CutInfo:
    """The word and a short context where the adapter's budget cuts ``text`` (offsets of the adapter inputs)."""
    first = next((o for o in offsets[n_kept:] if o is not None), None)
    if first is None:
        return CutInfo(n_kept, "", "(only the template's closing tokens)")
    c = min(first[0], len(text))
    a = c
    while a > 0 and text[a - 1].isalnum():
        a -= 1
    b = c
    while b < len(text) and text[b].isalnum():
        b += 1
    word = text[a:b] or text[c : c + 1]
    left, right = max(0, a - context), min(len(text), b + context)
    snippet = ("…" if left else "") + text[left:right].replace("\n", " ") + ("…" if right < len(text) else "")
    return CutInfo(n_kept, word, snippet)
