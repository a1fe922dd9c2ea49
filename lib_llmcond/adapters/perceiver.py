"""Adapter family B: a Perceiver resampler (learned latents cross-attend to the LLM hidden states).

The one known release (molbal's Qwen3-4B "SDXL-LLM-Distill", ``resampler.pth``) does not publish its
module code; only its card is known (4 layers of cross-attention + feed-forward, 77 x 2048 tokens and a
1280 pooled vector, ~280 M parameters, captions up to 256 tokens). So this module reads the structure from
the state dict's keys and shapes, for two common families of names, and refuses anything else with the
keys it could not place.

**Verified**: nothing against real weights (none were available). The tests check that each accepted
layout loads strictly, that the same weights in either layout give the same outputs, that the forward
matches an independent formulation of the computation described below, and that unknown layouts and
incomplete files are refused.

**Assumed** (change here when the real file is seen):

- Layout ``lucidrains`` (flamingo-pytorch / open_flamingo / IP-Adapter ``Resampler`` names):
  ``latents``, optional ``proj_in``, ``pos_emb`` (added before ``proj_in``), ``media_pos_emb`` (its first
  row added to every input token), ``layers.{i}.0`` = attention (``norm_media``/``norm1`` on the inputs,
  ``norm_latents``/``norm2`` on the latents, ``to_q``, ``to_kv``, ``to_out``), ``layers.{i}.1`` =
  feed-forward ``Sequential(LayerNorm, Linear, GELU, Linear)``, then ``norm`` / ``proj_out`` / ``norm_out``.
  As in those projects, keys and values are the inputs **and** the latents.
- Layout ``plain``: ``latents``, optional ``proj_in``, ``layers.{i}.cross_attn`` (``nn.MultiheadAttention``
  names or ``q/k/v/o_proj``), optional ``layers.{i}.self_attn`` on the latents, ``layers.{i}.ff``
  (``[LayerNorm,] Linear, GELU, Linear``), norms named ``norm_q``/``norm_latents``/``norm_kv``/``norm_media``/
  ``norm_self``/``norm_ff`` or numbered ``norm1..norm3`` in the order cross, self, ff. Keys and values are
  the inputs only. Order in a layer: cross-attention, self-attention, feed-forward, each pre-norm residual.
- Head size 64 (the default of all the projects above) unless the file's metadata (safetensors metadata, or
  plain values such as a ``config`` dict next to the state dict in a pickle) says ``heads`` or ``dim_head``; exact GELU; LayerNorm eps 1e-5.
- Pooled vector: a head named ``pooled_proj``/``pooled_projection``/``pool_proj``/``to_pooled``/
  ``pooled_head``/``pooler`` (one Linear, or Linear [LayerNorm] GELU Linear) applied to the **mean of the
  output tokens**. A file without such a head is refused (SDXL needs the pooled vector).
- Inputs are cut to the first ``max_input_len`` tokens: the ``pos_emb`` length when there is one, else the
  metadata's ``max_input_len``/``max_seq_len``/``max_length``, else 256 (the card's training length). The mask (1 = real token) masks input keys; latents are never masked.
- ``return_attention``: the cross-attention of the latents on the input tokens, averaged over heads and
  layers, renormalised over the input tokens (latent keys left out).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFileError
from .base import Adapter, AdapterOutput
from .layouts import KeyPlan

LAYOUTS = ("lucidrains", "plain")
DIM_HEAD = 64
DEFAULT_MAX_INPUT = 256
_POOLED_NAMES = ("pooled_proj", "pooled_projection", "pool_proj", "to_pooled", "pooled_head", "pooler")
FIX = "Only Perceiver-resampler files with the names described in llmcond's adapters/perceiver.py load"


@dataclass(frozen=True)
class PerceiverConfig:
    llm_dim: int
    dim: int = 2048
    depth: int = 4
    num_latents: int = 77
    inner: int = 2048  # heads * head size of the attention projections
    heads: int = 32
    ff_hidden: int = 8192
    out_dim: int = 2048
    pooled_dim: int = 1280
    pooled_hidden: int | None = None  # None: the pooled head is one Linear
    max_input_len: int = DEFAULT_MAX_INPUT
    kv_with_latents: bool = False
    self_attn: bool = False
    proj_in: bool = True
    proj_out: bool = False
    norm: bool = True  # LayerNorm(dim) after the layers
    norm_out: bool = False  # LayerNorm(out_dim) after proj_out
    norm_x: bool = True
    norm_q: bool = True
    ff_norm: bool = True
    attn_bias: bool = True
    ff_bias: bool = True
    pooled_norm: bool = False
    pos_emb: bool = False
    media_pos_emb: int = 0  # rows of flamingo's media_pos_emb


# ---- the module --------------------------------------------------------------------------------------------
def _ln(on: bool, dim: int) -> nn.Module | None:
    return nn.LayerNorm(dim) if on else None


class LatentAttention(nn.Module):
    """Pre-norm attention of the latents on a source; q/k/v fused in ``in_proj_weight`` like MHA."""

    def __init__(self, dim: int, inner: int, heads: int, bias: bool, norm_x: bool, norm_q: bool) -> None:
        super().__init__()
        self.heads = heads
        self.norm_x = _ln(norm_x, dim)
        self.norm_q = _ln(norm_q, dim)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, dim, bias=bias)

    def forward(
        self,
        latents: torch.Tensor,
        source: torch.Tensor | None,
        mask: torch.Tensor | None,
        with_latents: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """source None: self-attention. Returns the residual update and, for cross-attention, the
        head-averaged probabilities on the source positions [B, N, L] (before renormalisation)."""
        q_in = self.norm_q(latents) if self.norm_q is not None else latents
        if source is None:
            kv_in, key_mask = q_in, None
        else:
            x = self.norm_x(source) if self.norm_x is not None else source
            kv_in, key_mask = x, mask
            if with_latents:
                kv_in = torch.cat([x, q_in], dim=1)
                if mask is not None:
                    key_mask = torch.cat([mask, mask.new_ones(mask.shape[0], q_in.shape[1])], dim=1)
        w, b = self.in_proj_weight, self.in_proj_bias
        n = w.shape[0] // 3
        q = F.linear(q_in, w[:n], None if b is None else b[:n])
        k, v = F.linear(kv_in, w[n:], None if b is None else b[n:]).split(n, dim=-1)
        q, k, v = (self._split(t) for t in (q, k, v))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
        alive = None
        if key_mask is not None:
            alive = key_mask.any(dim=1)
            key_mask = key_mask | ~alive[:, None]  # a row with no key: attend to nothing (zero context)
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        probs = scores.softmax(dim=-1)
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(latents.shape[0], latents.shape[1], n)
        if alive is not None:
            ctx = ctx * alive[:, None, None]
        weights = None
        if source is not None:
            weights = probs.mean(dim=1)[..., : source.shape[1]]
            if alive is not None:
                weights = weights * alive[:, None, None]
        return self.out_proj(ctx), weights

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool, norm: bool) -> None:
        super().__init__()
        self.norm = _ln(norm, dim)
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x) if self.norm is not None else x
        return self.fc2(F.gelu(self.fc1(h)))


class PerceiverLayer(nn.Module):
    def __init__(self, c: PerceiverConfig) -> None:
        super().__init__()
        self.cross = LatentAttention(c.dim, c.inner, c.heads, c.attn_bias, c.norm_x, c.norm_q)
        self.self = (
            LatentAttention(c.dim, c.inner, c.heads, c.attn_bias, False, True) if c.self_attn else None
        )
        self.ff = FeedForward(c.dim, c.ff_hidden, c.ff_bias, c.ff_norm)


class PooledHead(nn.Module):
    def __init__(self, c: PerceiverConfig) -> None:
        super().__init__()
        width = c.pooled_hidden or c.pooled_dim
        self.fc1 = nn.Linear(c.out_dim, width)
        self.norm = _ln(c.pooled_norm, width)
        self.fc2 = nn.Linear(width, c.pooled_dim) if c.pooled_hidden else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.fc2(F.gelu(x)) if self.fc2 is not None else x


class PerceiverResampler(Adapter):
    family = "perceiver"

    def __init__(self, config: PerceiverConfig) -> None:
        super().__init__()
        c = self.config = config
        self.llm_dim, self.max_input_tokens, self.output_tokens = c.llm_dim, c.max_input_len, c.num_latents
        self.output_dim, self.pooled_dim = c.out_dim, c.pooled_dim
        self.pos_emb = nn.Parameter(torch.zeros(c.max_input_len, c.llm_dim)) if c.pos_emb else None
        self.media_pos_emb = nn.Parameter(torch.zeros(c.media_pos_emb, 1, c.dim)) if c.media_pos_emb else None
        self.proj_in = nn.Linear(c.llm_dim, c.dim) if c.proj_in else None
        self.latents = nn.Parameter(torch.zeros(c.num_latents, c.dim))
        self.layers = nn.ModuleList(PerceiverLayer(c) for _ in range(c.depth))
        self.norm = _ln(c.norm, c.dim)
        self.proj_out = nn.Linear(c.dim, c.out_dim) if c.proj_out else None
        self.norm_out = _ln(c.norm_out, c.out_dim)
        self.pooled = PooledHead(c)
        self.eval()

    def _forward(
        self, hidden: torch.Tensor, mask: torch.Tensor | None, return_attention: bool
    ) -> AdapterOutput:
        length = hidden.shape[1]
        x = hidden[:, : self.max_input_tokens]
        if mask is not None:
            mask = mask[:, : self.max_input_tokens]
        if self.pos_emb is not None:
            x = x + self.pos_emb[: x.shape[1]]
        if self.proj_in is not None:
            x = self.proj_in(x)
        if self.media_pos_emb is not None:
            x = x + self.media_pos_emb[0]
        lat = self.latents[None].expand(x.shape[0], -1, -1)
        maps = []
        for layer in self.layers:
            update, weights = layer.cross(lat, x, mask, self.config.kv_with_latents)
            lat = lat + update
            maps.append(weights)
            if layer.self is not None:
                lat = lat + layer.self(lat, None, None, False)[0]
            lat = lat + layer.ff(lat)
        for module in (self.norm, self.proj_out, self.norm_out):
            if module is not None:
                lat = module(lat)
        pooled = self.pooled(lat.mean(dim=1))
        attention = _attention_map(maps, length) if return_attention else None
        return AdapterOutput(crossattn=lat, pooled=pooled, attention=attention)


def _attention_map(maps: list[torch.Tensor], length: int) -> torch.Tensor:
    normed = [m / m.sum(dim=-1, keepdim=True).clamp_min(1e-30) for m in maps]
    avg = torch.stack(normed).mean(dim=0)
    return F.pad(avg, (0, length - avg.shape[-1]))


# ---- key layouts -------------------------------------------------------------------------------------------
def looks_like_perceiver(keys: Sequence[str]) -> bool:
    return any(_strip(k) in ("latents", "latent_queries", "queries") for k in keys) and any(
        _strip(k).startswith("layers.") for k in keys
    )


def _strip(key: str) -> str:
    return key[len("resampler.") :] if key.startswith("resampler.") else key


_LUCIDRAINS = (
    (r"layers\.(\d+)\.0\.(?:norm_media|norm1)\.(weight|bias)", r"layers.\1.cross.norm_x.\2"),
    (r"layers\.(\d+)\.0\.(?:norm_latents|norm2)\.(weight|bias)", r"layers.\1.cross.norm_q.\2"),
    (r"layers\.(\d+)\.0\.to_q\.(weight|bias)", r"layers.\1.cross.in_proj_\2#0"),
    (r"layers\.(\d+)\.0\.to_kv\.(weight|bias)", r"layers.\1.cross.in_proj_\2#1"),
    (r"layers\.(\d+)\.0\.to_out\.(weight|bias)", r"layers.\1.cross.out_proj.\2"),
    (r"layers\.(\d+)\.1\.(\d+)\.(weight|bias)", r"@ff layers.\1 \2 \3"),
)
_PLAIN = (
    (r"layers\.(\d+)\.(cross|self)_attn\.in_proj_(weight|bias)", r"layers.\1.\2.in_proj_\3"),
    (r"layers\.(\d+)\.(cross|self)_attn\.q_proj\.(weight|bias)", r"layers.\1.\2.in_proj_\3#0"),
    (r"layers\.(\d+)\.(cross|self)_attn\.k_proj\.(weight|bias)", r"layers.\1.\2.in_proj_\3#1"),
    (r"layers\.(\d+)\.(cross|self)_attn\.v_proj\.(weight|bias)", r"layers.\1.\2.in_proj_\3#2"),
    (
        r"layers\.(\d+)\.(cross|self)_attn\.(?:out_proj|o_proj|to_out)\.(weight|bias)",
        r"layers.\1.\2.out_proj.\3",
    ),
    (
        r"layers\.(\d+)\.(?:norm_kv|norm_media|norm_x|norm_context)\.(weight|bias)",
        r"layers.\1.cross.norm_x.\2",
    ),
    (r"layers\.(\d+)\.(?:norm_q|norm_latents|norm_cross)\.(weight|bias)", r"layers.\1.cross.norm_q.\2"),
    (r"layers\.(\d+)\.norm_self\.(weight|bias)", r"layers.\1.self.norm_q.\2"),
    (r"layers\.(\d+)\.norm_ff\.(weight|bias)", r"layers.\1.ff.norm.\2"),
    (r"layers\.(\d+)\.norm([123])\.(weight|bias)", r"@norm layers.\1 \2 \3"),
    (r"layers\.(\d+)\.ff\.(\d+)\.(weight|bias)", r"@ff layers.\1 \2 \3"),
)
_GLOBAL = (
    (r"(?:latents|latent_queries|queries)", r"latents"),
    (r"proj_in\.(weight|bias)", r"proj_in.\1"),
    (r"pos_emb\.weight", r"pos_emb"),
    (r"media_pos_emb", r"media_pos_emb"),
    (r"(?:norm|final_norm)\.(weight|bias)", r"norm.\1"),
    (r"proj_out\.(weight|bias)", r"proj_out.\1"),
    (r"norm_out\.(weight|bias)", r"norm_out.\1"),
    (rf"(?:{'|'.join(_POOLED_NAMES)})\.(weight|bias)", r"@pool pooled 0 \1"),
    (rf"(?:{'|'.join(_POOLED_NAMES)})\.(\d+)\.(weight|bias)", r"@pool pooled \1 \2"),
)
_TABLES = {"lucidrains": _LUCIDRAINS, "plain": _PLAIN}


def detect_layout(keys: Sequence[str]) -> str | None:
    keys = [_strip(k) for k in keys]
    if any(re.fullmatch(r"layers\.\d+\.0\.to_(q|kv)\.weight", k) for k in keys):
        return "lucidrains"
    if any(re.fullmatch(r"layers\.\d+\.(cross|self)_attn\..+", k) for k in keys):
        return "plain"
    return None


def plan_keys(shapes: Mapping[str, Sequence[int]], path: str | Path | None = None) -> KeyPlan:
    """Map a Perceiver file's keys onto this module's names; refuse (listing them) keys no rule places."""
    layout = detect_layout(list(shapes))
    if layout is None:
        raise ModelFileError(
            "a Perceiver resampler of an unknown layout (no layers.{i}.0.to_q/to_kv and no "
            f"layers.{{i}}.cross_attn): keys {_sample(shapes)}",
            path=path,
            fix=FIX,
        )
    rules = [(re.compile(p), r) for p, r in (*_GLOBAL, *_TABLES[layout])]
    placed: dict[str, list[tuple[int, str]]] = {}
    deferred: dict[str, list[tuple[str, str, str]]] = {}
    unplaced = []
    for key in shapes:
        name = _strip(key)
        target = next((pattern.sub(r, name) for pattern, r in rules if pattern.fullmatch(name)), None)
        if target is None:
            unplaced.append(key)
        elif target.startswith("@"):
            kind, group, index, what = target.split(" ")
            deferred.setdefault(f"{kind} {group}", []).append((index, what, key))
        else:
            canonical, _, order = target.partition("#")
            placed.setdefault(canonical, []).append((int(order or 0), key))
    for group, items in deferred.items():
        for canonical, key in _resolve_group(group, items, shapes, placed):
            placed.setdefault(canonical, []).append((0, key))
    problems = [f"keys llmcond cannot place: {_list(unplaced)}"] if unplaced else []
    problems += _conflicts(placed, shapes)
    if problems:
        raise ModelFileError(
            f"Perceiver resampler ({layout} layout) with " + "; ".join(problems), path=path, fix=FIX
        )
    plan = KeyPlan(layouts={layout})
    for canonical, parts in placed.items():
        sources = [k for _, k in sorted(parts)]
        first = tuple(int(s) for s in shapes[sources[0]])
        rows = sum(int(shapes[s][0]) for s in sources)
        shape = (rows, *first[1:]) if len(sources) > 1 else first
        if canonical == "latents" and len(shape) == 3 and shape[0] == 1:
            shape = shape[1:]
        plan.sources[canonical] = sources
        plan.shapes[canonical] = shape
    return plan


def _conflicts(placed: Mapping[str, list[tuple[int, str]]], shapes: Mapping[str, Sequence[int]]) -> list[str]:
    """Two keys for one place (e.g. ``norm1`` and ``norm_q``), or parts to fuse whose widths differ."""
    out = []
    for canonical, parts in placed.items():
        orders = [o for o, _ in parts]
        keys = [k for _, k in sorted(parts)]
        if len(set(orders)) != len(orders):
            out.append(f"keys {', '.join(keys)} all map to {canonical}")
        elif len({tuple(shapes[k][1:]) for k in keys}) > 1:
            out.append(
                f"parts of {canonical} differ in width: " + ", ".join(f"{k} {list(shapes[k])}" for k in keys)
            )
    return out


def _resolve_group(
    group: str,
    items: list[tuple[str, str, str]],
    shapes: Mapping[str, Sequence[int]],
    placed: Mapping[str, object],
) -> Iterator[tuple[str, str]]:
    """Sequential sub-modules decided by position and rank: in a feed-forward, 1-D weights before the first
    Linear are its LayerNorm and the 2-D ones are fc1, fc2; numbered norms go to cross, (self,) ff."""
    kind, prefix = group.split(" ")
    if kind == "@norm":
        has_self = any(c.startswith(f"{prefix}.self.") and "norm" not in c for c in placed)
        roles = ["cross.norm_q", "self.norm_q", "ff.norm"] if has_self else ["cross.norm_q", "ff.norm"]
        for index, what, key in items:
            i = int(index) - 1
            role = roles[i] if i < len(roles) else f"norm{index}"
            yield f"{prefix}.{role}.{what}", key
        return
    by_index: dict[int, dict[str, str]] = {}
    for index, what, key in items:
        by_index.setdefault(int(index), {})[what] = key
    linears = [i for i in sorted(by_index) if len(shapes.get(by_index[i].get("weight", ""), ())) == 2]
    names = ["fc1", "fc2"]
    base = "pooled" if kind == "@pool" else f"{prefix}.ff"
    for i in sorted(by_index):
        if i in linears:
            pos = linears.index(i)
            role = names[pos] if pos < len(names) else f"linear{pos}"
        else:
            role = "norm" if not linears or i < linears[0] or kind == "@pool" else f"extra{i}"
        for what, key in by_index[i].items():
            yield f"{base}.{role}.{what}", key


def config_from_plan(plan: KeyPlan, meta: Mapping[str, str] | None = None) -> PerceiverConfig:
    """Hyperparameters from the planned (canonical) shapes, the layout, and the file's metadata (heads)."""
    return config_from_shapes(plan.shapes, meta, kv_with_latents=plan.layout == "lucidrains")


def config_from_shapes(
    shapes: Mapping[str, Sequence[int]],
    meta: Mapping[str, str] | None = None,
    *,
    kv_with_latents: bool = False,
) -> PerceiverConfig:
    need = ("latents", "layers.0.cross.in_proj_weight", "layers.0.cross.out_proj.weight", "pooled.fc1.weight")
    missing = [k for k in need if k not in shapes]
    if missing:
        raise KeyError(missing)
    num_latents, dim = shapes["latents"][-2:]
    inner = shapes["layers.0.cross.in_proj_weight"][0] // 3
    depth = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("layers."))
    proj_out = "proj_out.weight" in shapes
    pooled_hidden = shapes["pooled.fc1.weight"][0] if "pooled.fc2.weight" in shapes else None
    return PerceiverConfig(
        kv_with_latents=kv_with_latents,
        llm_dim=int(shapes["proj_in.weight"][1]) if "proj_in.weight" in shapes else int(dim),
        dim=int(dim),
        depth=depth,
        num_latents=int(num_latents),
        inner=int(inner),
        heads=_heads(int(inner), meta or {}),
        ff_hidden=int(shapes["layers.0.ff.fc1.weight"][0])
        if "layers.0.ff.fc1.weight" in shapes
        else 4 * int(dim),
        out_dim=int(shapes["proj_out.weight"][0]) if proj_out else int(dim),
        pooled_dim=int(shapes["pooled.fc2.weight" if pooled_hidden else "pooled.fc1.weight"][0]),
        pooled_hidden=int(pooled_hidden) if pooled_hidden else None,
        max_input_len=int(shapes["pos_emb"][0]) if "pos_emb" in shapes else _max_len(meta or {}),
        self_attn="layers.0.self.in_proj_weight" in shapes,
        proj_in="proj_in.weight" in shapes,
        proj_out=proj_out,
        norm="norm.weight" in shapes,
        norm_out="norm_out.weight" in shapes,
        norm_x="layers.0.cross.norm_x.weight" in shapes,
        norm_q="layers.0.cross.norm_q.weight" in shapes,
        ff_norm="layers.0.ff.norm.weight" in shapes,
        attn_bias="layers.0.cross.in_proj_bias" in shapes,
        ff_bias="layers.0.ff.fc1.bias" in shapes,
        pooled_norm="pooled.norm.weight" in shapes,
        pos_emb="pos_emb" in shapes,
        media_pos_emb=int(shapes["media_pos_emb"][0]) if "media_pos_emb" in shapes else 0,
    )


def _heads(inner: int, meta: Mapping[str, str]) -> int:
    for key in ("heads", "num_heads", "n_heads", "num_attention_heads"):
        if str(meta.get(key, "")).isdigit() and inner % int(meta[key]) == 0:
            return int(meta[key])
    for key in ("dim_head", "head_dim"):
        if str(meta.get(key, "")).isdigit() and inner % int(meta[key]) == 0:
            return inner // int(meta[key])
    return max(inner // DIM_HEAD, 1)


def _max_len(meta: Mapping[str, str]) -> int:
    for key in ("max_input_len", "max_seq_len", "max_length", "max_tokens"):
        if str(meta.get(key, "")).isdigit():
            return int(meta[key])
    return DEFAULT_MAX_INPUT


def _list(items: Sequence[str], limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _sample(shapes: Mapping[str, Sequence[int]]) -> str:
    return _list([f"{k} {list(v)}" for k, v in sorted(shapes.items())], 12)


# ---- this module's tensors under another layout's names (writing test files: lib_llmcond.tiny) ---------------
def to_layout(sd: Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """This module's tensors under a layout's names (the inverse of ``plan_keys``)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown Perceiver layout {layout!r}")
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        for name, value in _rename_out(key, t, layout, sd):
            out[name] = value.contiguous()
    return out


def _rename_out(key: str, t: torch.Tensor, layout: str, sd: Mapping[str, torch.Tensor]):
    m = re.fullmatch(r"layers\.(\d+)\.(cross|self)\.(.+)", key)
    if m:
        i, which, rest = m.groups()
        yield from _attn_out(i, which, rest, t, layout, sd)
        return
    m = re.fullmatch(r"layers\.(\d+)\.ff\.(norm|fc1|fc2)\.(weight|bias)", key)
    if m:
        i, role, what = m.groups()
        has_norm = f"layers.{i}.ff.norm.weight" in sd
        if layout == "lucidrains":
            yield f"layers.{i}.1.{ {'norm': 0, 'fc1': 1, 'fc2': 3}[role] }.{what}", t
        else:
            index = {"norm": 0, "fc1": 1, "fc2": 3}[role] if has_norm else {"fc1": 0, "fc2": 2}[role]
            yield f"layers.{i}.ff.{index}.{what}", t
        return
    m = re.fullmatch(r"pooled\.(fc1|norm|fc2)\.(weight|bias)", key)
    if m:
        role, what = m.groups()
        if "pooled.fc2.weight" not in sd and "pooled.norm.weight" not in sd:
            yield f"pooled_proj.{what}", t
        else:
            yield f"pooled_proj.{ {'fc1': 0, 'norm': 1, 'fc2': 3}[role] }.{what}", t
        return
    if key == "pos_emb":
        yield "pos_emb.weight", t
        return
    yield key, t


def _attn_out(i, which, rest, t, layout, sd):
    if layout == "lucidrains":
        if which == "self":
            raise ValueError("the lucidrains layout has no self-attention")
        names = {"norm_x": "norm_media", "norm_q": "norm_latents", "out_proj": "to_out"}
        m = re.fullmatch(r"in_proj_(weight|bias)", rest)
        if m:
            n = t.shape[0] // 3
            yield f"layers.{i}.0.to_q.{m.group(1)}", t[:n]
            yield f"layers.{i}.0.to_kv.{m.group(1)}", t[n:]
            return
        head, _, what = rest.partition(".")
        yield f"layers.{i}.0.{names[head]}.{what}", t
        return
    m = re.fullmatch(r"in_proj_(weight|bias)", rest)
    if m:
        for j, part in zip("qkv", t.chunk(3, dim=0)):
            yield f"layers.{i}.{which}_attn.{j}_proj.{m.group(1)}", part
        return
    head, _, what = rest.partition(".")
    if head == "out_proj":
        yield f"layers.{i}.{which}_attn.out_proj.{what}", t
    else:  # norms
        name = {
            ("cross", "norm_x"): "norm_kv",
            ("cross", "norm_q"): "norm_q",
            ("self", "norm_q"): "norm_self",
        }
        yield f"layers.{i}.{name[(which, head)]}.{what}", t
