"""One native torch transformer for Gemma-3, Qwen3 and the T5Gemma encoder, driven by :class:`TransformerConfig`.

Parameter names are the HF names without the model prefix (``embed_tokens.weight``,
``layers.0.self_attn.q_proj.weight``, ``norm.weight``), so loading is a table of prefixes. The maths follows
transformers' modeling files for each family (norm casts included), without an LM head.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lib_llmcond.compat import has_fused_rms_norm
from lib_llmcond.encoders import lean as lean_ops
from lib_llmcond.encoders.config import TransformerConfig
from lib_llmcond.placement import TracksMoves

_mode = threading.local()


def on_accelerator(device: torch.device) -> bool:
    return device.type != "cpu"


def accelerated(x: torch.Tensor) -> bool:
    """Whether the layers compute ``x`` the lean way (:mod:`lean`: fewer kernels, for accelerators, where a
    forward is bound by kernel launches); the CPU, and any call inside :func:`op_by_op`, keep the reference's
    op-by-op maths."""
    return on_accelerator(x.device) and not getattr(_mode, "op_by_op", False)


@contextlib.contextmanager
def op_by_op() -> Iterator[None]:
    """The reference's op-by-op layer maths for the calls inside, on any device (this thread)."""
    before = getattr(_mode, "op_by_op", False)
    _mode.op_by_op = True
    try:
        yield
    finally:
        _mode.op_by_op = before


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32; Gemma scales by ``1 + w`` before the cast back, Qwen by ``w`` after it."""

    def __init__(self, dim: int, eps: float, plus_one: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim) if plus_one else torch.ones(dim))
        self.eps, self.plus_one = eps, plus_one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if accelerated(x) and has_fused_rms_norm():
            return F.rms_norm(x, (x.shape[-1],), self._scale_for(x.dtype), self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.plus_one:
            return (h * (1.0 + self.weight.float())).type_as(x)
        return self.weight * h.to(x.dtype)

    def _scale_for(self, dtype: torch.dtype) -> torch.Tensor:
        """The scale in ``dtype`` for ``F.rms_norm`` on an accelerator: one kernel instead of about ten (norms
        are most of a forward's kernels). The fused kernel computes in fp32 and rounds once, so in bf16 the
        result differs from the formula's by a rounding step at most. Made once per placement of the weight
        (it never changes in place after load)."""
        key = (self.weight.data_ptr(), self.weight.device, dtype)
        if getattr(self, "_scale_key", None) != key:
            w = self.weight.detach()
            self._scale = ((1.0 + w.float()) if self.plus_one else w).to(dtype)
            self._scale_key = key
        return self._scale


class Rotary:
    """Rotary position embedding tables for one rope base (cos/sin in the compute dtype)."""

    def __init__(self, head_dim: int, base: float, linear_factor: float = 1.0) -> None:
        exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
        self.inv_freq = 1.0 / (base**exponent) / linear_factor

        self._on_device: dict[torch.device, torch.Tensor] = {}

    def _inv_freq(self, device: torch.device) -> torch.Tensor:
        """The frequencies on ``device``, copied there once (no host-to-device copy inside an encode)."""
        if device.type == "cpu":
            return self.inv_freq
        if device not in self._on_device:
            self._on_device[device] = self.inv_freq.to(device)
        return self._on_device[device]

    def __call__(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [B, L, head_dim] in ``dtype``."""
        freqs = position_ids[..., None].float() * self._inv_freq(position_ids.device)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def tables(self, position_ids: torch.Tensor, dtype: torch.dtype, lean: bool) -> tuple[torch.Tensor, ...]:
        """What :class:`Attention` applies: ``(cos, sin)`` [B, 1, L, D] for heads-first queries, or on the lean
        path ``(cos, signed sin)`` [B, L, 1, D] for queries as the projection lays them out."""
        cos, sin = self(position_ids, dtype)
        if lean:
            return cos[:, :, None], lean_ops.signed_sin(sin)[:, :, None]
        return cos[:, None], sin[:, None]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.tanh = cfg.activation == "gelu_tanh"

        self.gate_up_proj: nn.Linear | None = None  # gate and up in one GEMM (:func:`fuse_projections`)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.gate_up_proj
        if (
            fused is not None
            and accelerated(x)
            and type(fused) is nn.Linear
            and type(self.down_proj) is nn.Linear
        ):
            return lean_ops.gated_mlp(x, fused.weight, self.down_proj.weight, self.tanh)
        if fused is not None:
            gate, up = fused(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        gate = F.gelu(gate, approximate="tanh") if self.tanh else F.silu(gate)
        return self.down_proj(gate * up)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(h, cfg.num_heads * d, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(cfg.num_heads * d, h, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_eps, cfg.norm_plus_one)
            self.k_norm = RMSNorm(d, cfg.rms_eps, cfg.norm_plus_one)
        self.cfg = cfg
        self.qkv_proj: nn.Linear | None = None  # q, k, v in one GEMM (:func:`fuse_projections`)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.qkv_proj is None:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q_width, kv_width = self.cfg.num_heads * self.cfg.head_dim, self.cfg.num_kv_heads * self.cfg.head_dim
        q, k, v = self.qkv_proj(x).split([q_width, kv_width, kv_width], dim=-1)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        past: KeyValues | None = None,
        collect: list[KeyValues] | None = None,
        form: str = "sdpa",
    ) -> torch.Tensor:
        """``past``: keys/values of earlier positions to attend to as well; ``collect``: receives this call's.
        ``mask``: boolean (True = attend), or on the lean path the additive mask of :func:`lean.additive`
        built for attention ``form`` (:data:`lean.FORMS`; the lean path only)."""
        cfg = self.cfg
        b, n, _ = x.shape
        q, k, v = self._qkv(x)
        q = q.reshape(b, n, cfg.num_heads, cfg.head_dim)
        k = k.reshape(b, n, cfg.num_kv_heads, cfg.head_dim)
        v = v.reshape(b, n, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        lean = accelerated(x)
        if lean:  # rope on the projection's layout; queries go to attention as they are
            q, k = lean_ops.rotate(q, *rope), lean_ops.rotate(k, *rope).transpose(1, 2)
        else:
            q, k = _rotate(q.transpose(1, 2), *rope), _rotate(k.transpose(1, 2), *rope)
        if collect is not None:
            collect.append((k, v))
        if past is not None:
            k = torch.cat([past[0].expand(b, -1, -1, -1), k], dim=2)
            v = torch.cat([past[1].expand(b, -1, -1, -1), v], dim=2)
        if lean:
            return self.o_proj(lean_ops.attend(q, k, v, mask, cfg, form))
        out = _attend(q, k, v, mask, cfg)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, cfg.num_heads * cfg.head_dim))


KeyValues = tuple[torch.Tensor, torch.Tensor]  # [B, kv_heads, L, head_dim] after q/k norm and rope


@dataclass
class PrefixState:
    """A causal model's state after a fixed prefix: per-layer keys/values and the prefix's own outputs.

    Later tokens attend to these keys as if the prefix had run with them (causal attention: the prefix never
    sees what follows), so a template shared by every prompt runs once instead of once per prompt."""

    keys_values: list[KeyValues]
    hidden: torch.Tensor  # [1, P, hidden]: the final-norm outputs at the prefix positions

    @property
    def length(self) -> int:
        return self.hidden.shape[1]


def _attend(q, k, v, mask: torch.Tensor | None, cfg: TransformerConfig) -> torch.Tensor:
    """Scaled dot-product attention; ``mask`` None means plain causal (or full, for bidirectional models)."""
    if cfg.attn_softcap is not None:
        return _eager_softcap(q, k, v, mask, cfg, cfg.num_heads // cfg.num_kv_heads)
    return lean_ops.grouped_sdpa(q, k, v, mask, cfg)


def _eager_softcap(q, k, v, mask, cfg: TransformerConfig, groups: int) -> torch.Tensor:
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * cfg.scaling
    scores = torch.tanh(scores / cfg.attn_softcap) * cfg.attn_softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    elif cfg.causal:
        n = q.shape[-2]
        causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


class Layer(nn.Module):
    def __init__(self, cfg: TransformerConfig, names: dict[str, str]) -> None:
        super().__init__()
        self.names = names
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        for name in names.values():
            self.add_module(name, RMSNorm(cfg.hidden_size, cfg.rms_eps, cfg.norm_plus_one))

    def _norm(self, role: str, x: torch.Tensor) -> torch.Tensor:
        name = self.names.get(role)
        return getattr(self, name)(x) if name else x

    def forward(
        self, x: torch.Tensor, rope, mask: torch.Tensor | None, past=None, collect=None, form: str = "sdpa"
    ) -> torch.Tensor:
        attn = self.self_attn(self._norm("pre_attn", x), rope, mask, past, collect, form)
        x = x + self._norm("post_attn", attn)
        return x + self._norm("post_mlp", self.mlp(self._norm("pre_mlp", x)))


# family -> norm role -> HF module name
NORM_NAMES: dict[str, dict[str, str]] = {
    "gemma3": {
        "pre_attn": "input_layernorm",
        "post_attn": "post_attention_layernorm",
        "pre_mlp": "pre_feedforward_layernorm",
        "post_mlp": "post_feedforward_layernorm",
    },
    "qwen3": {"pre_attn": "input_layernorm", "pre_mlp": "post_attention_layernorm"},
    "t5gemma": {
        "pre_attn": "pre_self_attn_layernorm",
        "post_attn": "post_self_attn_layernorm",
        "pre_mlp": "pre_feedforward_layernorm",
        "post_mlp": "post_feedforward_layernorm",
    },
}


class TextTransformer(TracksMoves):
    """Token ids -> last hidden state after the final norm. No LM head."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg, NORM_NAMES[cfg.family]) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_eps, cfg.norm_plus_one)
        local = cfg.rope_local_theta
        self._rope_full = Rotary(cfg.head_dim, cfg.rope_theta, cfg.rope_linear_factor)
        self._rope_local = Rotary(cfg.head_dim, local) if local is not None else self._rope_full
        self.lean = True  # False: the op-by-op maths everywhere (set where the lean forms failed a check)
        self.attention_form = "sdpa"  # the lean path's attention (:data:`lean.FORMS`)

    def use_attention(self, form: str) -> None:
        """Attend the ``form`` way on the lean path (chosen per device by :mod:`lean_check`)."""
        if form not in lean_ops.FORMS:
            raise ValueError(f"unknown attention form {form!r}")
        self.attention_form = form

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        if self.config.embed_scale:
            x = x * torch.tensor(self.config.hidden_size**0.5, dtype=x.dtype)
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        prefix: PrefixState | None = None,
    ) -> torch.Tensor:
        """Hidden states of ``input_ids``; with ``prefix`` (causal models), they follow its positions."""
        return self._run(input_ids, attention_mask, position_ids, prefix, None)

    def prefix_state(self, input_ids: torch.Tensor) -> PrefixState:
        """The state after ``input_ids`` [1, P] at positions 0..P-1 (causal models only)."""
        if not self.config.causal:
            raise ValueError("a prefix state needs a causal model")
        collect: list[KeyValues] = []
        hidden = self._run(input_ids, None, None, None, collect)
        return PrefixState(collect, hidden)

    def _run(self, input_ids, attention_mask, position_ids, prefix, collect) -> torch.Tensor:
        if not self.lean:
            with op_by_op():
                return self._layers_run(input_ids, attention_mask, position_ids, prefix, collect)
        return self._layers_run(input_ids, attention_mask, position_ids, prefix, collect)

    def rope_tables(self, position_ids: torch.Tensor, dtype: torch.dtype, lean: bool) -> dict[bool, tuple]:
        """Rope tables per layer kind (sliding or not) for :class:`Attention`."""
        ropes = {False: self._rope_full.tables(position_ids, dtype, lean)}
        if self._rope_local is not self._rope_full:
            ropes[True] = self._rope_local.tables(position_ids, dtype, lean)
        return ropes

    def _layers_run(self, input_ids, attention_mask, position_ids, prefix, collect) -> torch.Tensor:
        cfg = self.config
        b, n = input_ids.shape
        offset = 0 if prefix is None else prefix.length
        if position_ids is None:
            position_ids = torch.arange(offset, offset + n, device=input_ids.device).expand(b, n)
        x = self.embed(input_ids)
        lean = accelerated(x)
        form = self.attention_form
        additive = lean_ops.mask_dtype(cfg, form, x.dtype) if lean else None
        masks = MaskCache(cfg, attention_mask, n, x.device, offset, additive, form)
        ropes = self.rope_tables(position_ids, x.dtype, lean)
        for i, layer in enumerate(self.layers):
            sliding = cfg.layer_is_sliding(i)
            past = None if prefix is None else prefix.keys_values[i]
            x = layer(x, ropes.get(sliding, ropes[False]), masks.get(sliding), past, collect, form)
        return self.norm(x) if cfg.final_norm else x


class MaskCache:
    """Boolean attention masks [B, 1, L, offset + L] (True = attend), built once per kind and only when needed.

    Queries sit at positions ``offset..offset+L-1`` and keys at ``0..offset+L-1`` (``offset`` > 0 when a cached
    prefix comes first). Causal models with right padding need no padding mask: real tokens never see later
    (padded) keys, and padded positions are never read. A causal model without a prefix whose sequence fits its
    sliding window needs no mask at all.

    With ``additive`` (a dtype: the lean path), masks are additive in that dtype with query rows folded as
    :func:`lean.attend` wants them for attention ``form``; there a causal model gets an explicit mask wherever
    ``lean.attend`` cannot say "causal" to SDPA (folded heads, scores computed by GEMMs).
    """

    def __init__(
        self,
        cfg: TransformerConfig,
        attention_mask: torch.Tensor | None,
        n: int,
        device,
        offset: int = 0,
        additive: torch.dtype | None = None,
        form: str = "sdpa",
    ) -> None:
        self.cfg, self.n, self.device, self.offset, self.additive = cfg, n, device, offset, additive
        self.form = form
        self.fold = lean_ops.fold_of(cfg, form) if additive is not None else 1
        self.keys = None
        if attention_mask is not None and not cfg.causal and not _all_true_on_cpu(attention_mask):
            self.keys = attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
        self._built: dict[bool, torch.Tensor | None] = {}

    def get(self, sliding: bool) -> torch.Tensor | None:
        if sliding not in self._built:
            mask = self._build(sliding)
            if self.additive is not None:
                blocked = lean_ops.blocked_value(self.cfg, self.form, self.additive)
                mask = lean_ops.additive(mask, self.additive, blocked)
            self._built[sliding] = mask
        return self._built[sliding]

    def _build(self, sliding: bool) -> torch.Tensor | None:
        cfg, n, offset = self.cfg, self.n, self.offset
        total = offset + n
        window = cfg.sliding_window if sliding and cfg.sliding_window and cfg.sliding_window < total else None
        explicit = self.additive is not None and (self.fold > 1 or lean_ops.explicit(cfg, self.form))
        if cfg.causal and window is None and offset == 0 and not explicit:
            return None
        rows = n * self.fold  # folded heads: query rows (l, head), each with query l's mask
        queries = offset + torch.arange(rows, device=self.device) // self.fold
        diff = queries[:, None] - torch.arange(total, device=self.device)[None, :]  # query - key
        allowed = torch.ones(rows, total, dtype=torch.bool, device=self.device)
        if cfg.causal:
            allowed = diff >= 0
        if window is not None:
            allowed = allowed & (diff.abs() < window)
        mask = allowed[None, None]
        if self.keys is not None:
            mask = mask & self.keys
        elif window is None and not cfg.causal:
            return None  # bidirectional, no padding, no window: full attention
        return mask


def _all_true_on_cpu(mask: torch.Tensor) -> bool:
    """Whether a CPU mask is all ones (then it is skipped). On an accelerator the mask is always applied:
    asking would wait for the device (a host sync) and would make the work depend on the data."""
    return mask.device.type == "cpu" and bool(mask.all())


def _fused(linears: list[nn.Module]) -> nn.Linear | None:
    """One ``nn.Linear`` computing ``linears`` side by side, or None where one of them is not a plain dense
    linear (packed for the CPU, quantized, on meta)."""
    if any(type(m) is not nn.Linear or m.weight.is_meta for m in linears):
        return None
    with torch.no_grad():
        weight = torch.cat([m.weight for m in linears])
        biases = [m.bias for m in linears]
        bias = None if any(b is None for b in biases) else torch.cat(biases)  # type: ignore[arg-type]
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


def fuse_projections(model: TextTransformer) -> int:
    """Replace each layer's q/k/v and gate/up linears by one GEMM each (fewer, larger kernels on a GPU);
    returns how many were fused. Weights are concatenated once and the originals dropped."""
    count = 0
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        qkv = _fused([attn.q_proj, attn.k_proj, attn.v_proj]) if attn.qkv_proj is None else None
        if qkv is not None:
            attn.qkv_proj = qkv
            del attn.q_proj, attn.k_proj, attn.v_proj
            count += 1
        gate_up = _fused([mlp.gate_proj, mlp.up_proj]) if mlp.gate_up_proj is None else None
        if gate_up is not None:
            mlp.gate_up_proj = gate_up
            del mlp.gate_proj, mlp.up_proj
            count += 1
    return count
