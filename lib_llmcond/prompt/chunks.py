"""Long prompts: splitting a text into pieces that fit a token budget, and naming where a prompt is cut.

Pure functions: the caller passes its tokenizer as ``count_tokens`` and its offsets.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .emphasis import Piece, Span

# boundary kinds, best first: a piece may end where these match (before a heading, after the others)
BOUNDARIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("heading", re.compile(r"\n(?=[ \t]*#{1,6}[ \t])")),
    ("paragraph", re.compile(r"\n[ \t]*\n")),
    ("line", re.compile(r"\n")),
    ("sentence", re.compile(r"[.!?…](?=\s)|[。！？]")),
    ("comma", re.compile(r"[,;](?=\s)|[，、；]")),
    ("space", re.compile(r"\s")),
)
_RANKED = tuple((len(BOUNDARIES) - k, name, pattern) for k, (name, pattern) in enumerate(BOUNDARIES))
MIN_FILL = 0.5  # a preferred boundary may shorten a piece to this share of what would fit


def _boundaries(text: str) -> dict[int, int]:
    """Cut positions (a piece ends there) -> best rank."""
    best: dict[int, int] = {}
    for rank, name, pattern in _RANKED:
        for m in pattern.finditer(text):
            pos = m.start() if name == "heading" else m.end()
            if 0 < pos < len(text) and best.get(pos, -1) < rank:
                best[pos] = rank
    return best


def _inside_span(pos: int, spans: Sequence[Span]) -> bool:
    return any(s.start < pos < s.end for s in spans)


def _piece(text: str, spans: Sequence[Span], start: int, end: int) -> Piece:
    """``text[start:end]`` stripped, with its spans clipped and shifted."""
    chunk = text[start:end]
    lead = len(chunk) - len(chunk.lstrip())
    clean = chunk.strip()
    a, b = start + lead, start + lead + len(clean)
    out = [Span(max(s.start, a) - a, min(s.end, b) - a, s.weight) for s in spans if s.start < b and s.end > a]
    return Piece(clean, tuple(out), a)


def _last_fitting(cands: list[int], fits: Callable[[int], bool]) -> int:
    """Index of the last candidate that fits (counts grow with the end), or -1."""
    lo, hi = 0, len(cands)
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(cands[mid]):
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


def _choose_cut(start: int, text: str, cands: list[int], ranks: dict[int, int], fits) -> int | None:
    usable = cands[bisect.bisect_right(cands, start) :]
    k = _last_fitting(usable, fits)
    if k < 0:
        return None
    limit = usable[k]
    floor = start + (limit - start) * MIN_FILL
    window = [p for p in usable[: k + 1] if p >= floor]
    best = max(ranks[p] for p in window)
    return max(p for p in window if ranks[p] == best)


def _hard_cut(start: int, text: str, fits) -> int:
    """No boundary fits (one huge word): the longest prefix that fits, at least one character."""
    k = _last_fitting(list(range(start + 1, len(text) + 1)), fits)
    return start + 1 + max(k, 0)


def split_for_budget(
    text: str, spans: Sequence[Span], count_tokens: Callable[[str], int], budget: int
) -> list[Piece]:
    """Pieces of ``text`` of at most ``budget`` tokens each, cut on the best boundary before the limit.

    Among the boundaries where the piece still fits and that keep at least ``MIN_FILL`` of it, the best kind
    wins (heading > paragraph > line > sentence > comma > space), the last of that kind. Cuts never fall inside
    a word, nor inside an emphasis span unless that span alone exceeds the budget; a single word longer than
    the budget is cut inside. Each piece is stripped and carries its own spans.
    """
    budget = max(int(budget), 1)
    spans = [Span(*s) for s in spans]
    ranks = _boundaries(text)
    clean_cands = sorted(p for p in ranks if not _inside_span(p, spans))
    all_cands = sorted(ranks)
    pieces: list[Piece] = []
    start = 0
    while start < len(text):
        if not text[start:].strip():
            break

        def fits(end: int, start: int = start) -> bool:
            return count_tokens(text[start:end].strip()) <= budget

        if fits(len(text)):
            end = len(text)
        else:
            end = _choose_cut(start, text, clean_cands, ranks, fits)
            if end is None:
                end = _choose_cut(start, text, all_cands, ranks, fits)
            if end is None:
                end = _hard_cut(start, text, fits)
        piece = _piece(text, spans, start, end)
        if piece.text:
            pieces.append(piece)
        start = end
    return pieces or [Piece("")]


@dataclass(frozen=True)
class CutInfo:
    """Where a prompt is cut: the first dropped token, its word and some context around it."""

    token_index: int
    char_index: int
    word: str
    snippet: str

    @property
    def message(self) -> str:
        if not self.word:
            return f"cut at token {self.token_index} ({self.snippet})"
        return f'cut at token {self.token_index} near "{self.word}" ({self.snippet})'

    def describe(self) -> str:
        return self.message


_WORD = re.compile(r"\w+|[^\w\s]+")
MAX_WORD = 24
CONTEXT = 30


def _word_at(text: str, pos: int, token_end: int) -> str:
    for m in _WORD.finditer(text, max(pos - MAX_WORD * 4, 0)):
        if m.end() > pos:
            if m.end() - m.start() <= MAX_WORD:
                return m.group(0)
            return text[pos : max(token_end, pos + 1)].strip() or m.group(0)[:MAX_WORD]
    return text[pos:token_end].strip()


def _snippet(text: str, pos: int, context: int) -> str:
    a, b = max(pos - context, 0), min(pos + context, len(text))
    body = " ".join(text[a:pos].split()) + " | " + " ".join(text[pos:b].split())
    return ("…" if a > 0 else "") + body.strip() + ("…" if b < len(text) else "")


TEMPLATE_ONLY = "(only the template's closing tokens)"


def cut_report(
    prompt_text: str, offsets: Sequence[tuple[int, int] | None], n_kept: int, context: int = CONTEXT
) -> CutInfo | None:
    """The cut when only the first ``n_kept`` tokens reach the adapter; ``None`` when nothing is cut.

    ``offsets`` are the tokens' character spans in ``prompt_text`` (``None`` for template tokens). The snippet
    shows up to ``context`` characters each side with ``|`` at the cut. When only template tokens are dropped,
    the word is empty and the snippet says so.
    """
    if n_kept >= len(offsets) or n_kept < 0:
        return None
    found = next(((i, o) for i, o in enumerate(offsets[n_kept:], n_kept) if o is not None), None)
    if found is None:
        return CutInfo(n_kept, len(prompt_text), "", TEMPLATE_ONLY)
    _, (start, end) = found
    start = min(max(start, 0), len(prompt_text))
    while start < len(prompt_text) and prompt_text[start].isspace():
        start += 1
    return CutInfo(n_kept, start, _word_at(prompt_text, start, end), _snippet(prompt_text, start, context))
