"""Emphasis weights: character spans -> LLM token weights -> weights of the adapter's output tokens -> crossattn.

The adapter compresses up to 512 input tokens into 308 output tokens through its compression attention, so the
weight of output token j is read from where it looks: ``m_j = 1 + sum_i A[j, i] (w_i - 1)`` (``attention``),
or the weight of the input it attends to most (``argmax``). Writing it as ``1 + A (w - 1)`` keeps m exactly 1
where every weight is 1. The hosts' modes then apply ``m`` to crossattn; pooled is never touched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Span = tuple[int, int, float]
MAPPINGS = ("attention", "argmax")
MODES = ("None", "Ignore", "Original", "No norm")


def token_weights(offsets: Sequence[tuple[int, int] | None], spans: Sequence[Span]) -> list[float]:
    """One weight per token: the weight covering most of its characters (1.0 outside spans and for template tokens)."""
    weights = []
    for off in offsets:
        best = 1.0
        if off is not None:
            s, e = off
            covers = [(min(e, b) - max(s, a), w) for a, b, w in spans if min(e, b) > max(s, a)]
            plain = (e - s) - sum(c for c, _ in covers)  # characters outside every span weigh 1.0
            best_cover = plain
            for cover, w in covers:
                if cover > best_cover:
                    best, best_cover = w, cover
        weights.append(float(best))
    return weights


def output_multipliers(
    attention: torch.Tensor, token_w: torch.Tensor, mode: str = "attention"
) -> torch.Tensor:
    """[B, T] multipliers of the output tokens from attention [B, T, L] and input token weights [B, L]."""
    delta = token_w.to(attention.dtype) - 1.0
    if mode == "attention":
        return 1.0 + torch.einsum("btl,bl->bt", attention, delta)
    if mode == "argmax":
        idx = attention.argmax(dim=-1)
        return 1.0 + torch.gather(delta, 1, idx)
    raise ValueError(f"mapping must be one of {MAPPINGS}, not {mode!r}")


def apply_emphasis(crossattn: torch.Tensor, multipliers: torch.Tensor, mode: str) -> torch.Tensor:
    """The hosts' emphasis modes on crossattn [B, T, D]: ``Original`` restores the mean after scaling."""
    if mode in ("None", "Ignore"):
        return crossattn
    scaled = crossattn * multipliers[..., None].to(crossattn.dtype)
    if mode == "No norm":
        return scaled
    if mode == "Original":
        ratio = crossattn.mean() / scaled.mean()
        if not torch.isfinite(ratio) or not 0.5 <= float(ratio) <= 2.0:
            return scaled  # the mean is near zero: restoring it would amplify noise (documented in README)
        return scaled * ratio
    raise ValueError(f"emphasis mode must be one of {MODES}, not {mode!r}")
