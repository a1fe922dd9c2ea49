"""The switches one transformer needs, and the family table that reads them from ``config.json``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib_llmcond.errors import ModelFileError

SLIDING, FULL = "sliding_attention", "full_attention"


@dataclass(frozen=True)
class TransformerConfig:
    family: str  # "gemma3" | "qwen3" | "t5gemma"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_eps: float = 1e-6
    norm_plus_one: bool = False  # Gemma: RMSNorm scales by (1 + w), computed in fp32
    qk_norm: bool = False
    sandwich_norms: bool = False  # Gemma: norms after attention/MLP too
    embed_scale: bool = False  # Gemma: embeddings times sqrt(hidden)
    activation: str = "silu"  # "silu" | "gelu_tanh"
    rope_theta: float = 10000.0
    rope_local_theta: float | None = None  # rope base of sliding layers, when different
    rope_linear_factor: float = 1.0  # linear rope scaling of full-attention layers
    layer_types: tuple[str, ...] = field(default_factory=tuple)
    sliding_window: int | None = None
    causal: bool = True
    attn_softcap: float | None = None
    query_pre_attn_scalar: float | None = None
    attention_bias: bool = False
    final_norm: bool = True

    @property
    def scaling(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def layer_is_sliding(self, i: int) -> bool:
        return bool(self.layer_types) and self.layer_types[i] == SLIDING and self.sliding_window is not None


def _gemma_layer_types(cfg: dict[str, Any], n: int) -> tuple[str, ...]:
    if cfg.get("layer_types"):
        return tuple(cfg["layer_types"])
    pattern = int(cfg.get("sliding_window_pattern", 6))
    return tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n))


def _rope_linear(cfg: dict[str, Any]) -> float:
    scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return 1.0
    if kind == "linear":
        return float(scaling["factor"])
    raise ModelFileError(
        f"rope scaling {kind!r} is not supported", fix="use a model without that rope scaling"
    )


def _common(cfg: dict[str, Any]) -> dict[str, Any]:
    heads = int(cfg["num_attention_heads"])
    return dict(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads", heads)),
        head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
    )


def _gemma3(cfg: dict[str, Any]) -> TransformerConfig:
    base = _common(cfg)
    return TransformerConfig(
        family="gemma3",
        **base,
        norm_plus_one=True,
        qk_norm=True,
        sandwich_norms=True,
        embed_scale=True,
        activation="gelu_tanh",
        rope_theta=float(cfg.get("rope_theta", 1_000_000.0)),
        rope_local_theta=float(cfg.get("rope_local_base_freq", 10_000.0)),
        rope_linear_factor=_rope_linear(cfg),
        layer_types=_gemma_layer_types(cfg, base["num_layers"]),
        sliding_window=cfg.get("sliding_window", 512),
        causal=True,
        attn_softcap=cfg.get("attn_logit_softcapping"),
        query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar", 256)),
    )


def _qwen3(cfg: dict[str, Any]) -> TransformerConfig:
    base = _common(cfg)
    n = base["num_layers"]
    sliding = bool(cfg.get("use_sliding_window")) and cfg.get("sliding_window")
    types = tuple(cfg.get("layer_types") or [FULL] * n)
    if sliding:
        start = int(cfg.get("max_window_layers", n))
        types = tuple(SLIDING if i >= start else FULL for i in range(n))
    return TransformerConfig(
        family="qwen3",
        **base,
        qk_norm=True,
        activation="silu",
        attention_bias=bool(cfg.get("attention_bias", False)),
        rope_theta=float(cfg.get("rope_theta", 1_000_000.0)),
        rope_linear_factor=_rope_linear(cfg),
        layer_types=types,
        sliding_window=int(cfg["sliding_window"]) if sliding else None,
        causal=True,
    )


def _t5gemma(cfg: dict[str, Any]) -> TransformerConfig:
    enc = dict(cfg.get("encoder") or cfg)
    base = _common(enc)
    return TransformerConfig(
        family="t5gemma",
        **base,
        norm_plus_one=True,
        qk_norm=False,
        sandwich_norms=True,
        embed_scale=True,
        activation="gelu_tanh" if enc.get("hidden_activation", "gelu_pytorch_tanh") != "silu" else "silu",
        rope_theta=float(enc.get("rope_theta", 10_000.0)),
        layer_types=_gemma_layer_types({"sliding_window_pattern": 2, **enc}, base["num_layers"]),
        sliding_window=enc.get("sliding_window", 4096),
        causal=False,
        attn_softcap=enc.get("attn_logit_softcapping", 50.0),
        query_pre_attn_scalar=float(enc.get("query_pre_attn_scalar", 256)),
    )


# model_type -> (reader, where the text config lives)
FAMILIES: dict[str, Callable[[dict[str, Any]], TransformerConfig]] = {
    "gemma3_text": _gemma3,
    "gemma3": lambda c: _gemma3(c.get("text_config") or c),
    "qwen3": _qwen3,
    "t5gemma": _t5gemma,
}


def config_from_hf(cfg: dict[str, Any], *, path: str | Path | None = None) -> TransformerConfig:
    """Read a ``config.json`` dict; the family comes from ``model_type``, never from the file name."""
    model_type = cfg.get("model_type")
    reader = FAMILIES.get(str(model_type))
    if reader is None:
        raise ModelFileError(
            f"unsupported model type {model_type!r}",
            path=path,
            fix=f"llmcond runs these families: {', '.join(sorted(FAMILIES))}",
        )
    try:
        return reader(cfg)
    except KeyError as e:
        raise ModelFileError(
            f"config.json lacks {e.args[0]!r}", path=path, fix="use the model's own config"
        ) from e
