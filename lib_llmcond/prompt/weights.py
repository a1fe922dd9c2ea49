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
# The selectable mappings: name -> the exponent p that sharpens the compression attention before it carries the
# weights (``sharpen``). p = 1 is the attention itself; p = 6 was chosen by ``benchmarks/emphasis_mapping.py``
# (README: Emphasis). ``pipeline.MAPPINGS`` is read from here; the default is ``pipeline.DEFAULT_MAPPING``.
MAPPING_POWERS: dict[str, float] = {"sharpened": 6.0, "attention": 1.0}
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


def sharpen(attention: torch.Tensor, power: float) -> torch.Tensor:
    """Rows of attention [B,T,L] raised to ``power``, renormalised, and rescaled to their original mass (mass on
    something other than the inputs, a Perceiver's latents, still weighs 1.0); rows without mass stay zero.

    Computed as ``softmax(power * log A)``: on a softmax attention that is the attention its logits would give
    multiplied by ``power`` (a temperature of 1/power). It is continuous in A and Lipschitz in log A: if every
    entry of a row changes by a factor within ``exp(+-e)``, every entry of the result changes by a factor within
    ``exp(+-(2 * power + 1) * e)``, so the row moves by at most ``mass * (exp((2 * power + 1) * e) - 1)`` in L1
    and a multiplier by at most that times ``max |w_i - 1|``. Argmax, the limit power -> inf, jumps at ties.
    """
    if power == 1.0:
        return attention
    mass = attention.sum(-1, keepdim=True)
    sharp = torch.nan_to_num(torch.softmax(power * torch.log(attention.clamp_min(0)), dim=-1))
    return torch.where(mass > 0, sharp * mass, torch.zeros_like(sharp))


def multipliers_at(attention: torch.Tensor, token_w: torch.Tensor, power: float) -> torch.Tensor:
    """``m_j = 1 + sum_i S[j,i] (w_i - 1)`` with S = ``sharpen(attention, power)``: weights [B,T] of the output
    tokens from input-token weights [B,L]. All weights 1.0 give exactly 1.0."""
    attention = attention.float()
    token_w = token_w.to(attention.device, torch.float32)
    return 1.0 + torch.einsum("btl,bl->bt", sharpen(attention, power), token_w - 1.0)


def output_multipliers(attention: torch.Tensor, token_w: torch.Tensor, mode: str) -> torch.Tensor:
    """Weights [B,T] of the adapter's output tokens from input-token weights [B,L] and the head-averaged
    compression attention [B,T,L], with the selectable mapping ``mode`` (a key of ``MAPPING_POWERS``).

    ``attention``: ``m_j = 1 + sum_i A[j,i] (w_i - 1)``, i.e. ``sum_i A[j,i] w_i`` for rows summing to 1.
    ``sharpened``: the same on ``sharpen(A, 6)``, so an output token follows its strongest sources (less leakage)
    while staying continuous in the model's outputs.
    """
    if mode not in MAPPING_POWERS:
        raise PromptError(
            f"unknown emphasis mapping {mode!r}", fix=f"Use one of {', '.join(MAPPING_POWERS)}."
        )
    return multipliers_at(attention, token_w, MAPPING_POWERS[mode])


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
    if crossattn.device.type == "cpu" and not bool(changed.any()):  # on a GPU, asking would be a host sync
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
