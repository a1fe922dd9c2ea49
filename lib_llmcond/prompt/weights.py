"""Emphasis weights: character spans -> LLM tokens -> the adapter's output tokens -> crossattn.

The adapter turns L LLM tokens into T output tokens (308 for RouWei), so a word's weight cannot scale "its"
output vector as CLIP's emphasis does. We carry it through the adapter's own attention: an output token is
scaled by the weights of the input tokens it reads from (``output_multipliers``), then the hosts' emphasis
modes scale crossattn (``apply_emphasis``). The pooled vector is never touched.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import torch

from ..errors import PromptError
from .emphasis import Span

EMPHASIS_MODES: tuple[str, ...] = ("Original", "No norm", "Ignore", "None")
MODES = EMPHASIS_MODES
MAPPINGS: tuple[str, ...] = ("argmax", "attention", "sharpened", "nearest")
SHARPEN_POWER = 4.0
# "Original" restores a row's mean only when that rescales it by a factor in this range: a mean near zero
# (the adapter's crossattn has one) would turn the restore into a large, noisy gain
RESTORE_RANGE = (0.5, 2.0)


def _token_weight(start: int, end: int, spans: Sequence[Span], starts: list[int], text: str | None) -> float:
    """Weight of the characters [start, end): the weight covering most of its non-space characters."""
    if end <= start:
        return 1.0
    chars = range(start, end)
    if text is not None:
        visible = [c for c in chars if c < len(text) and not text[c].isspace()]
        chars = visible or chars
    votes: dict[float, int] = {}
    k = max(bisect.bisect_right(starts, start) - 1, 0)
    covered = 0
    while k < len(spans) and spans[k].start < end:
        span = spans[k]
        n = sum(1 for c in chars if span.start <= c < span.end)
        if n:
            votes[span.weight] = votes.get(span.weight, 0) + n
            covered += n
        k += 1
    votes[1.0] = votes.get(1.0, 0) + len(chars) - covered
    # most characters wins; a tie goes to the weight farthest from 1.0 (the emphasis the user wrote)
    return max(votes.items(), key=lambda kv: (kv[1], abs(math.log(abs(kv[0]) or 1e-30))))[0]


def token_weights(
    offsets: Sequence[tuple[int, int] | None], spans: Sequence[Span], *, text: str | None = None
) -> list[float]:
    """One weight per token from its character offsets in the clean text.

    ``None`` offsets (template tokens) and zero-width tokens weigh 1.0. A token covering characters of several
    weights (byte-level BPE merges a space into the next word, offsets of split characters overlap) takes the
    weight of most of its characters; with ``text`` given, spaces don't vote (so " cat" weighs what "cat"
    weighs). ``spans`` must not overlap (``parse_prompt``'s don't).
    """
    ordered = sorted((Span(*s) for s in spans), key=lambda s: s.start)
    starts = [s.start for s in ordered]
    return [1.0 if off is None else _token_weight(off[0], off[1], ordered, starts, text) for off in offsets]


def rollout(
    compression: torch.Tensor, narrow: Sequence[torch.Tensor] = (), residual: float = 0.5
) -> torch.Tensor:
    """Attention rollout: the compression attention [B,T,L] carried through self-attention maps [B,T,T].

    Each block mixes ``residual * I + (1 - residual) * A`` (the residual stream), applied in block order.
    """
    out = compression
    for attn in narrow:
        eye = torch.eye(attn.shape[-1], dtype=attn.dtype, device=attn.device)
        out = (residual * eye + (1.0 - residual) * attn) @ out
    return out


def _sharpen(attention: torch.Tensor, power: float) -> torch.Tensor:
    """Rows raised to ``power`` and rescaled to their original mass (so leftover mass still weighs 1.0)."""
    mass = attention.sum(-1, keepdim=True)
    sharp = attention.clamp_min(0) ** power
    return sharp * (mass / sharp.sum(-1, keepdim=True).clamp_min(torch.finfo(sharp.dtype).tiny))


def _nearest(attention: torch.Tensor, token_w: torch.Tensor) -> torch.Tensor:
    """Output token j reads the input token at the same relative position (a positional baseline)."""
    b, t, length = attention.shape
    real = (attention.sum(1) > 0).to(token_w.dtype) if attention.numel() else token_w.new_ones(b, length)
    out = token_w.new_ones(b, t)
    for row in range(b):
        idx = torch.nonzero(real[row]).flatten()
        if len(idx) == 0:
            continue
        pos = torch.round(torch.linspace(0, len(idx) - 1, t, dtype=torch.float64)).long()
        out[row] = token_w[row, idx[pos]]
    return out


def output_multipliers(
    attention: torch.Tensor, token_w: torch.Tensor, mode: str = "attention"
) -> torch.Tensor:
    """Weights [B,T] of the adapter's output tokens from input-token weights [B,L] and attention [B,T,L].

    ``argmax``: the weight of the input token output token j attends to most (the default: see the README's
    measurement). ``attention``: ``m_j = 1 + sum_i A[j,i] (w_i - 1)``, i.e. ``sum_i A[j,i] w_i`` for rows summing to 1 and
    any attention mass not on the inputs (a Perceiver's latents) weighing 1.0. ``sharpened``: the same on
    ``A**4`` rescaled per row, so an output token follows its strongest sources (less leakage).
    ``nearest``: the input token at the same relative position among the attended ones. All weights 1.0 give
    exactly 1.0.
    """
    if mode not in MAPPINGS:
        raise PromptError(f"unknown emphasis mapping {mode!r}", fix=f"Use one of {', '.join(MAPPINGS)}.")
    attention = attention.float()
    token_w = token_w.to(attention.device, torch.float32)
    if mode == "nearest":
        return _nearest(attention, token_w)
    if mode == "argmax":
        return torch.gather(token_w, 1, attention.argmax(dim=-1))
    if mode == "sharpened":
        attention = _sharpen(attention, SHARPEN_POWER)
    return 1.0 + torch.einsum("btl,bl->bt", attention, token_w - 1.0)


def apply_emphasis(
    crossattn: torch.Tensor, multipliers: torch.Tensor, mode: str = "Original"
) -> torch.Tensor:
    """The hosts' emphasis modes on crossattn [B,T,D] with per-token multipliers [B,T].

    ``Original``: scale, then rescale the row to its former mean (the host takes the mean over the whole
    batch; we take it per row so a prompt's result doesn't depend on its batch neighbours); when that rescale
    factor is outside ``RESTORE_RANGE`` or not finite (a mean near zero), the row is only scaled, as ``No norm``.
    ``No norm``: scale. ``Ignore`` and ``None``: unchanged. Rows whose multipliers are all 1.0 come back
    bit-identical.
    """
    if mode not in EMPHASIS_MODES:
        raise PromptError(f"unknown emphasis mode {mode!r}", fix=f"Use one of {', '.join(EMPHASIS_MODES)}.")
    if mode in ("Ignore", "None"):
        return crossattn
    m = multipliers.to(crossattn.device)
    changed = (m != 1.0).any(dim=-1)
    if not bool(changed.any()):
        return crossattn
    z = crossattn.float()
    scaled = z * m.float().unsqueeze(-1)
    if mode == "Original":
        before = z.mean(dim=(1, 2), keepdim=True)
        after = scaled.mean(dim=(1, 2), keepdim=True)
        ratio = before / after
        lo, hi = RESTORE_RANGE
        ok = torch.isfinite(ratio) & (ratio >= lo) & (ratio <= hi)
        scaled = torch.where(ok, scaled * ratio, scaled)
    out = scaled.to(crossattn.dtype)
    return torch.where(changed.view(-1, 1, 1), out, crossattn)
