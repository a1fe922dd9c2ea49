"""The transformer's maths with fewer kernels, for accelerators, where a forward is bound by kernel launches.

Each function computes what its counterpart in :mod:`transformer` computes, op for op the same formula, with
the work regrouped: rope as one roll and one fused multiply-add, attention masks made additive once per forward
(SDPA turns a boolean mask into an additive one on every call), grouped-query attention with a single key/value
head folded into a plain one-head attention over ``heads x length`` queries (no key/value copies, whatever the
attention backend supports), softcapped attention with its scalings folded. Plain attention comes in two
forms, chosen per device by timing both (:mod:`lean_check`): ``"sdpa"`` (torch's fused kernels) and ``"gemm"``
(two batched GEMMs around a softmax, scores in fp32: with short sequences and few heads the fused kernels leave
most of a large card idle, GEMMs of the same sizes do not). Results differ from the op-by-op path only by
rounding (a fused multiply-add rounds once where two ops round twice), checked in ``tests/test_lean_path.py``;
the CPU keeps the op-by-op path.

Layouts: queries and keys stay ``[B, L, heads, head_dim]`` (as the projection writes them) until attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lib_llmcond.compat import bmm_writes_fp32, sdpa_supports_enable_gqa
from lib_llmcond.encoders.config import TransformerConfig


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """``sin`` with its first half negated: ``rotate_half(x) * sin == roll(x) * signed_sin(sin)`` exactly
    (a sign flip is exact), where ``roll`` swaps the two halves."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rope on ``x`` [B, L, H, D] with tables [B, L, 1, D]: three kernels instead of five."""
    half = x.shape[-1] // 2
    rolled = torch.cat([x[..., half:], x[..., :half]], dim=-1)
    return torch.addcmul(x * cos, rolled, sin_signed)


def gated_mlp(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, tanh: bool) -> torch.Tensor:
    """``down(act(gate) * up)`` with the fused gate/up weight [2I, H], computed with the features on the rows:
    one GEMM writes [2I, tokens], so the activation and the product run on contiguous halves (vectorised
    kernels, where the halves of a [tokens, 2I] output are strided), and the down projection reads the
    transposed product as it lies (a GEMM takes a transposed operand without a copy)."""
    shape = x.shape
    gu = torch.mm(gate_up, x.reshape(-1, shape[-1]).t())
    i = gu.shape[0] // 2
    act = F.gelu(gu[:i], approximate="tanh") if tanh else F.silu(gu[:i])
    return torch.mm(act.mul_(gu[i:]).t(), down.t()).view(*shape[:-1], down.shape[0])


def additive(
    mask: torch.Tensor | None, dtype: torch.dtype, blocked: float = float("-inf")
) -> torch.Tensor | None:
    """A boolean mask (True = attend) as an additive one in ``dtype`` (0 / ``blocked``), which SDPA uses as is
    (it would convert a boolean mask in every call)."""
    if mask is None:
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, blocked)


FORMS = ("sdpa", "gemm")  # how :func:`attend` computes plain attention; softcapped attention is always GEMMs


def explicit(cfg: TransformerConfig, form: str) -> bool:
    """Whether :func:`attend` computes the scores itself (then every mask is explicit, causal ones included)."""
    return cfg.attn_softcap is not None or form == "gemm"


def fold_of(cfg: TransformerConfig, form: str) -> int:
    """How many query rows :func:`attend` stacks per query position: the heads of one key/value group when the
    scores are computed here, all heads when one key/value head serves them all; else 1."""
    groups = cfg.num_heads // cfg.num_kv_heads
    if explicit(cfg, form):
        return groups
    return groups if cfg.num_kv_heads == 1 else 1


def mask_dtype(cfg: TransformerConfig, form: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype of the additive masks: the scores' (fp32 in the ``"gemm"`` form, else the compute dtype)."""
    return torch.float32 if form == "gemm" and cfg.attn_softcap is None else dtype


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    cfg: TransformerConfig,
    form: str = "sdpa",
) -> torch.Tensor:
    """Attention of ``q`` [B, L, Hq, D] (contiguous) over ``k``, ``v`` [B, Hkv, S, D]; ``bias``: additive mask
    (from :func:`additive`, in :func:`mask_dtype`, with query rows (l, head) when :func:`fold_of` > 1, as the
    transformer's mask cache builds them), None = no mask (bidirectional) or plain causal. Returns
    [B, L, Hq * D]."""
    b, n, hq, d = q.shape
    if cfg.attn_softcap is not None:
        return _softcapped(q, k, v, bias, cfg)
    if form == "gemm":
        return _gemm_attention(q, k, v, bias, cfg)
    if fold_of(cfg, form) > 1:  # [B, L, Hq, D] is [B, 1, L * Hq, D]: row (l, h) attends as query l did
        causal = bias is None and cfg.causal
        if causal:
            raise ValueError("folded heads need an explicit causal mask")
        out = F.scaled_dot_product_attention(
            q.reshape(b, 1, n * hq, d), k, v, attn_mask=bias, scale=cfg.scaling
        )
        return out.reshape(b, n, hq * d)
    return grouped_sdpa(q.transpose(1, 2), k, v, bias, cfg).transpose(1, 2).reshape(b, n, hq * d)


def grouped_sdpa(q, k, v, mask: torch.Tensor | None, cfg: TransformerConfig) -> torch.Tensor:
    """SDPA of heads-first ``q`` [B, Hq, L, D] over ``k``, ``v`` [B, Hkv, S, D] (grouped-query where Hkv < Hq:
    natively where torch has ``enable_gqa``, else with repeated keys/values); ``mask`` None means plain causal
    (or full, for bidirectional models). Both layer paths attend through it."""
    kwargs = {}
    if q.shape[1] != k.shape[1]:
        if sdpa_supports_enable_gqa():
            kwargs["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    causal = mask is None and cfg.causal
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, scale=cfg.scaling, **kwargs
    )


def blocked_value(cfg: TransformerConfig, form: str, dtype: torch.dtype) -> float:
    """What a blocked position adds to a score: -inf for SDPA (as its boolean masks do); the dtype's lowest value
    where the scores are computed here, as the op-by-op softcapped path and transformers' eager attention do (a
    query whose every key is blocked, a padded one, then averages finite values instead of making NaNs that
    later layers would read)."""
    return torch.finfo(dtype).min if explicit(cfg, form) else float("-inf")


def _gemm_attention(q, k, v, bias, cfg: TransformerConfig) -> torch.Tensor:
    """``softmax(q k^T * scaling + bias) v`` as two batched GEMMs, the query heads of each key/value group
    stacked as rows (l, head) like :func:`_softcapped`; the scores and the softmax in fp32 (as the fused kernels
    keep them), the probabilities rounded to the compute dtype for the second GEMM (as they do too)."""
    b, n, hq, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = hq // hkv
    qf = q.view(b, n, hkv, g, d).transpose(1, 2).reshape(b * hkv, n * g, d)  # a view for one key/value head
    scores = _scores_fp32(qf, k.reshape(b * hkv, s, d).transpose(1, 2)).view(b, hkv, n * g, s)
    scores = scores.mul_(cfg.scaling) if bias is None else torch.add(bias, scores, alpha=cfg.scaling)
    probs = scores.softmax(dim=-1).to(v.dtype)
    out = torch.bmm(probs.view(b * hkv, n * g, s), v.reshape(b * hkv, s, d))
    return out.view(b, hkv, n, g, d).transpose(1, 2).reshape(b, n, hq * d)


def _scores_fp32(q: torch.Tensor, kt: torch.Tensor) -> torch.Tensor:
    """``q @ kt`` in fp32: a half-precision GEMM writing fp32 where torch offers it (CUDA, ``out_dtype``), else
    on fp32 copies (the same products: a bf16 product is exact in fp32)."""
    if q.dtype == torch.float32:
        return torch.bmm(q, kt)
    if bmm_writes_fp32(q.device):
        return torch.bmm(q, kt, out_dtype=torch.float32)
    return torch.bmm(q.float(), kt.float())


def _softcapped(q, k, v, bias, cfg: TransformerConfig) -> torch.Tensor:
    """Gemma-2-style attention, ``softmax(cap * tanh(q k^T * scaling / cap) + mask) v``, with the query heads of
    each key/value group stacked on the query axis as rows (l, head) (one copy of the queries instead of
    repeated keys/values); ``bias`` is folded the same way."""
    b, n, hq, d = q.shape
    hkv = k.shape[1]
    g, cap = hq // hkv, cfg.attn_softcap
    if bias is None and cfg.causal:
        raise ValueError("softcapped causal attention needs an explicit mask")
    qf = q.view(b, n, hkv, g, d).transpose(1, 2).reshape(b, hkv, n * g, d)
    scores = torch.matmul(qf, k.transpose(-1, -2)).mul_(cfg.scaling / cap).tanh_()
    scores = scores.mul_(cap) if bias is None else torch.add(bias, scores, alpha=cap)
    probs = scores.softmax(dim=-1)  # fp32 inside the kernel, rounded once: as softmax in fp32, then a cast
    out = torch.matmul(probs, v)  # [B, Hkv, L * g, D]
    return out.view(b, hkv, n, g, d).transpose(1, 2).reshape(b, n, hq * d)
