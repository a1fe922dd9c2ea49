"""SDXL conditioning assembly: the 2816-wide ``vector`` and equal-length crossattn rows.

``vector = pooled(1280) ‖ E(h) ‖ E(w) ‖ E(crop_top) ‖ E(crop_left) ‖ E(target_h) ‖ E(target_w)``, each E a
256-wide sinusoidal embedding computed the way sgm's ``ConcatTimestepEmbedderND`` does (fp32, cos half first).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

SIZE_EMBED_DIM = 256
POOLED_DIM = 1280
VECTOR_DIM = POOLED_DIM + 6 * SIZE_EMBED_DIM  # 2816
CROSSATTN_DIM = 2048


def size_embedding(
    values: torch.Tensor, dim: int = SIZE_EMBED_DIM, max_period: float = 10000.0
) -> torch.Tensor:
    """Embed each scalar of ``values`` [N, k] into ``dim`` features: returns [N, k * dim] (fp32)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = values.to(torch.float32).reshape(-1, 1) * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return emb.reshape(values.shape[0], -1)


def size_vector(
    n: int,
    *,
    height: int,
    width: int,
    crop_top: int = 0,
    crop_left: int = 0,
    target_height: int | None = None,
    target_width: int | None = None,
) -> torch.Tensor:
    """The six size/crop embeddings as [n, 1536] (the part of ``vector`` after pooled)."""
    th = height if target_height is None else target_height
    tw = width if target_width is None else target_width
    values = torch.tensor([[height, width, crop_top, crop_left, th, tw]], dtype=torch.float32)
    return size_embedding(values).expand(n, -1)


def make_vector(pooled: torch.Tensor, **sizes: int | None) -> torch.Tensor:
    """``pooled`` [N, 1280] plus the size/crop embeddings (keyword arguments of :func:`size_vector`)."""
    if pooled.shape[-1] != POOLED_DIM:
        raise ValueError(f"pooled must be {POOLED_DIM} wide, got {tuple(pooled.shape)}")
    extra = _size_row(pooled.device, tuple(sorted(sizes.items()))).expand(pooled.shape[0], -1)
    return torch.cat([pooled.to(torch.float32), extra], dim=1)


@functools.lru_cache(maxsize=64)
def _size_row(device: torch.device, sizes: tuple) -> torch.Tensor:
    """One [1, 1536] size row on ``device``, made once per size (no host-to-device copy per encode)."""
    return size_vector(1, **dict(sizes)).to(device)


def pad_blocks(rows: Sequence[torch.Tensor], filler: torch.Tensor) -> torch.Tensor:
    """Stack crossattn rows [T_i, D] whose lengths are multiples of ``filler``'s [T, D] block length,
    padding the shorter ones with ``filler`` blocks (as the hosts pad CLIP chunks with the empty chunk)."""
    longest = max(r.shape[0] for r in rows)
    block = filler.shape[0]
    out = []
    for r in rows:
        missing = longest - r.shape[0]
        if missing % block:
            raise ValueError(f"row length {r.shape[0]} is not a multiple of the block length {block}")
        out.append(torch.cat([r, filler.repeat(missing // block, 1)], dim=0) if missing else r)
    return torch.stack(out)
