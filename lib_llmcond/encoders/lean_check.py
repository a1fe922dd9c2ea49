"""A check, once per device and dtype, that the lean layer maths (:mod:`lean`) agrees with the op-by-op maths
where the model will run: the lean forms lean on what the device's kernels do (fused norms, SDPA backends,
folded heads), so before a model computes there, one layer of each kind runs both ways on a small random batch
(a cached prefix, right padding) and is compared. Where they disagree, or the lean forms fail, the model keeps
the op-by-op maths there (slower, never wrong) and a warning says so.
"""

from __future__ import annotations

import logging

import torch

from lib_llmcond.encoders.transformer import MaskCache, TextTransformer, op_by_op
from lib_llmcond.matmul_precision import matmul_precision

log = logging.getLogger("llmcond")

PREFIX, TOKENS = 5, 24
# mean |lean - op-by-op| / mean |op-by-op| over one layer's real outputs: a rounding step in bf16 is ~4e-3 at
# most, a layout or masking mistake is of the order of 1
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def lean_agrees(model: TextTransformer, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``model``'s lean layer maths gives the op-by-op results on ``device`` (see the module doc)."""
    try:
        error = _largest_error(model, device, dtype)
    except Exception as e:  # a lean form the device's kernels refuse: the op-by-op maths instead
        log.warning(
            "llmcond: the fast layer path failed on %s (%s): using the reference maths there", device, e
        )
        return False
    if error <= TOLERANCE.get(dtype, 2e-2):
        return True
    log.warning(
        "llmcond: the fast layer path disagrees with the reference maths on %s (relative error %.3g): using the "
        "reference maths there (slower); please report this with your GPU and torch version",
        device,
        error,
    )
    return False


def _largest_error(model: TextTransformer, device: torch.device, dtype: torch.dtype) -> float:
    cfg = model.config
    kinds = {cfg.layer_is_sliding(i): i for i in range(cfg.num_layers)}  # one layer of each kind
    gen = torch.Generator().manual_seed(0)
    total = PREFIX + TOKENS
    x = torch.randn(2, total, cfg.hidden_size, generator=gen).to(device=device, dtype=dtype)
    keep = torch.ones(2, total, dtype=torch.long)
    keep[1, PREFIX + TOKENS // 2 :] = 0  # the second row is right padded
    keep = keep.to(device)
    positions = torch.arange(total, device=device).expand(2, total)
    worst = 0.0
    with torch.inference_mode(), matmul_precision("fp32", device):  # the maths compared, not a host's TF32
        for index in kinds.values():
            lean = _layer_output(model, index, x, keep, positions, lean=True)
            with op_by_op():
                ref = _layer_output(model, index, x, keep, positions, lean=False)
            real = keep[:, PREFIX:].bool() if cfg.causal else keep.bool()
            a, b = lean[real].float(), ref[real].float()
            if not torch.isfinite(a).all():
                return float("inf")
            worst = max(worst, ((a - b).abs().mean() / b.abs().mean().clamp_min(1e-12)).item())
    return worst


def _layer_output(model, index: int, x, keep, positions, *, lean: bool) -> torch.Tensor:
    """Layer ``index`` on ``x``: for causal models after a prefix of ``PREFIX`` positions whose keys/values it
    made itself (as a cached prefix is used); for bidirectional ones on the whole padded batch."""
    cfg, layer = model.config, model.layers[index]
    sliding, dtype = cfg.layer_is_sliding(index), x.dtype
    additive = dtype if lean else None

    def rope(pos: torch.Tensor) -> tuple:
        tables = model.rope_tables(pos, dtype, lean)
        return tables.get(sliding, tables[False])

    if not cfg.causal:
        masks = MaskCache(cfg, keep, x.shape[1], x.device, 0, additive)
        return layer(x, rope(positions), masks.get(sliding))
    collect: list = []
    head = MaskCache(cfg, None, PREFIX, x.device, 0, additive)
    layer(x[:1, :PREFIX], rope(positions[:1, :PREFIX]), head.get(sliding), None, collect)
    rest = MaskCache(cfg, None, TOKENS, x.device, PREFIX, additive)
    return layer(x[:, PREFIX:], rope(positions[:, PREFIX:]), rest.get(sliding), collect[0])
