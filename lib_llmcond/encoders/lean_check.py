"""A check, once per device and dtype, that the lean layer maths (:mod:`lean`) agrees with the op-by-op maths
where the model will run, and the choice of its attention form there.

The lean forms lean on what the device's kernels do (fused norms, SDPA backends, folded heads), so before a
model computes there, one layer of each kind runs both ways on a small random batch (a cached prefix, right
padding) and is compared, once per attention form. Of the forms that agree, the faster one on a realistic
shape is kept (timed on CUDA, where the fused attention kernels and plain GEMMs trade places with the card and
the shapes; elsewhere only the fused form is tried). Where no form agrees, or they all fail, the model keeps
the op-by-op maths there (slower, never wrong) and a warning says so.
"""

from __future__ import annotations

import logging
import time

import torch

from lib_llmcond import devices
from lib_llmcond.encoders import lean as lean_ops
from lib_llmcond.encoders.config import TransformerConfig
from lib_llmcond.encoders.transformer import MaskCache, TextTransformer, op_by_op
from lib_llmcond.matmul_precision import matmul_precision

log = logging.getLogger("llmcond")

PREFIX, TOKENS = 5, 24
# mean |lean - op-by-op| / mean |op-by-op| over one layer's real outputs: a rounding step in bf16 is ~4e-3 at
# most, a layout or masking mistake is of the order of 1
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
TIMED_TOKENS = 512  # the attention timed: a pair of long prompts, as a call runs them
ROUNDS, WARMUP, REPEATS = 3, 2, 10


def choose_lean_form(model: TextTransformer, device: torch.device, dtype: torch.dtype) -> str | None:
    """The attention form (:data:`lean.FORMS`) ``model``'s lean maths uses on ``device``, or None where no form
    gives the op-by-op results there (see the module doc)."""
    problems: dict[str, str] = {}
    candidates = candidate_forms(model.config, device)
    for form in candidates:
        problem = _disagreement(model, device, dtype, form)
        if problem is not None:
            problems[form] = problem
    agreeing = [f for f in candidates if f not in problems]
    if not agreeing:
        log.warning(
            "llmcond: the fast layer path %s on %s: using the reference maths there (slower); please report "
            "this with your GPU and torch version",
            "; ".join(problems.values()),
            device,
        )
        return None
    for form, problem in problems.items():
        log.info("llmcond: attention form %s %s on %s: not used", form, problem, device)
    if len(agreeing) == 1:
        return agreeing[0]
    seconds = {form: float("inf") for form in agreeing}
    for _ in range(ROUNDS):  # interleaved, best of each: a clock still ramping up favours neither form
        for form in agreeing:
            seconds[form] = min(seconds[form], seconds_per_attention(model.config, device, dtype, form))
    best = min(seconds, key=seconds.__getitem__)
    log.info(
        "llmcond: attention on %s: %s (%s)",
        device,
        best,
        ", ".join(f"{form} {s * 1e6:.0f} us" for form, s in seconds.items()),
    )
    return best


def candidate_forms(cfg: TransformerConfig, device: torch.device) -> tuple[str, ...]:
    """The attention forms worth trying on ``device``: both on CUDA (timed there), else the fused one; one for
    softcapped attention (always GEMMs)."""
    if cfg.attn_softcap is not None or device.type != "cuda":
        return lean_ops.FORMS[:1]
    return lean_ops.FORMS


def _disagreement(model: TextTransformer, device: torch.device, dtype: torch.dtype, form: str) -> str | None:
    """None where the lean maths with attention ``form`` agrees with the op-by-op maths, else what is wrong."""
    try:
        error = _largest_error(model, device, dtype, form)
    except Exception as e:  # a lean form the device's kernels refuse
        return f"failed ({e})"
    if error <= TOLERANCE.get(dtype, 2e-2):
        return None
    return f"disagrees with the reference maths (relative error {error:.3g})"


def seconds_per_attention(
    cfg: TransformerConfig, device: torch.device, dtype: torch.dtype, form: str
) -> float:
    """Seconds one lean attention call takes on ``device`` for two prompts of :data:`TIMED_TOKENS` tokens."""
    gen = torch.Generator().manual_seed(0)
    b, n, d = 2, TIMED_TOKENS, cfg.head_dim

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    q, k, v = rand(b, n, cfg.num_heads, d), rand(b, cfg.num_kv_heads, n, d), rand(b, cfg.num_kv_heads, n, d)
    keep = None
    if not cfg.causal:  # bidirectional: the second prompt is half padding
        keep = torch.ones(b, n, dtype=torch.long)
        keep[1, n // 2 :] = 0
    bias = MaskCache(cfg, keep, n, device, 0, lean_ops.mask_dtype(cfg, form, dtype), form).get(False)
    with torch.inference_mode():
        for _ in range(WARMUP):
            lean_ops.attend(q, k, v, bias, cfg, form)
        devices.synchronize(device)
        start = time.perf_counter()
        for _ in range(REPEATS):
            lean_ops.attend(q, k, v, bias, cfg, form)
        devices.synchronize(device)
    return (time.perf_counter() - start) / REPEATS


def _largest_error(model: TextTransformer, device: torch.device, dtype: torch.dtype, form: str) -> float:
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
            lean_out = _layer_output(model, index, x, keep, positions, form)
            with op_by_op():
                ref = _layer_output(model, index, x, keep, positions, None)
            real = keep[:, PREFIX:].bool() if cfg.causal else keep.bool()
            a, b = lean_out[real].float(), ref[real].float()
            if not torch.isfinite(a).all():
                return float("inf")
            worst = max(worst, ((a - b).abs().mean() / b.abs().mean().clamp_min(1e-12)).item())
    return worst


def _layer_output(model, index: int, x, keep, positions, form: str | None) -> torch.Tensor:
    """Layer ``index`` on ``x``, the lean way with attention ``form`` (None: op by op): for causal models after
    a prefix of ``PREFIX`` positions whose keys/values it made itself (as a cached prefix is used); for
    bidirectional ones on the whole padded batch."""
    cfg, layer = model.config, model.layers[index]
    sliding, dtype, lean = cfg.layer_is_sliding(index), x.dtype, form is not None
    form = form or lean_ops.FORMS[0]
    additive = lean_ops.mask_dtype(cfg, form, dtype) if lean else None

    def rope(pos: torch.Tensor) -> tuple:
        tables = model.rope_tables(pos, dtype, lean)
        return tables.get(sliding, tables[False])

    def masks(attention_mask, n: int, offset: int) -> MaskCache:
        return MaskCache(cfg, attention_mask, n, x.device, offset, additive, form)

    if not cfg.causal:
        return layer(x, rope(positions), masks(keep, x.shape[1], 0).get(sliding), form=form)
    collect: list = []
    head = masks(None, PREFIX, 0).get(sliding)
    layer(x[:1, :PREFIX], rope(positions[:1, :PREFIX]), head, None, collect, form)
    rest = masks(None, TOKENS, PREFIX)
    return layer(x[:, PREFIX:], rope(positions[:, PREFIX:]), rest.get(sliding), collect[0], form=form)
