"""Adapter family A: RouWei's ``LLMToSDXLAdapter`` (reference.md §2), computed as the reference nodes do.

Stages: project (only when ``llm_dim != dim``), keep the first 512 positions or zero-pad on the right, add
input positions, "wide" pre-LN self-attention blocks with a key-padding mask, compression of the sequence
into 308 learned queries with a sigmoid gate, output positions, "narrow" blocks without a mask, and an
attention-pooling head for the 1280-d pooled vector.

Two exact rewrites keep the numbers while saving time: padded positions never act as keys (they are masked
everywhere), and self-attention without relative positions does not care about the order of the keys, so the
wide blocks and the compression run on the real positions only, gathered into a compact sequence. A row
without any real input token (an empty input; the reference gives NaN there) attends to nothing: its
attention contexts are zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Adapter, AdapterOutput, fp32_inference

HEADS = 16  # not recorded in the files; every released adapter uses 16


@dataclass(frozen=True)
class LLMToSDXLConfig:
    llm_dim: int
    n_wide: int
    n_narrow: int
    dim: int = 2048
    pooled_dim: int = 1280
    max_input_len: int = 512
    output_len: int = 308
    mlp_hidden: int = 8192
    heads: int = HEADS
    input_norm: bool = False  # community files: a LayerNorm over the LLM hidden states before the projection


PRESETS: dict[str, LLMToSDXLConfig] = {
    "gemma": LLMToSDXLConfig(llm_dim=1152, n_wide=2, n_narrow=3),
    "t5gemma": LLMToSDXLConfig(llm_dim=2304, n_wide=3, n_narrow=3),
}


def config_from_shapes(shapes: Mapping[str, Sequence[int]]) -> LLMToSDXLConfig:
    """Every hyperparameter but the head count, read from the canonical (REF-layout) key -> shape table."""
    need = ("input_position_embeddings", "output_position_embeddings", "pooled_projection.4.weight")
    missing = [k for k in need if k not in shapes]
    if missing:
        raise KeyError(missing)
    _, max_len, dim = shapes["input_position_embeddings"]
    output_len = shapes["output_position_embeddings"][1]
    llm_dim = shapes["seq_projection.weight"][1] if "seq_projection.weight" in shapes else dim
    mlp = shapes.get("wide_attention_blocks.0.mlp.0.weight") or shapes.get(
        "narrow_attention_blocks.0.mlp.0.weight"
    )
    return LLMToSDXLConfig(
        llm_dim=int(llm_dim),
        n_wide=_count_blocks(shapes, "wide_attention_blocks."),
        n_narrow=_count_blocks(shapes, "narrow_attention_blocks."),
        dim=int(dim),
        pooled_dim=int(shapes["pooled_projection.4.weight"][0]),
        max_input_len=int(max_len),
        output_len=int(output_len),
        mlp_hidden=int(mlp[0]) if mlp else 4 * int(dim),
        input_norm="input_norm.weight" in shapes,
    )


def _count_blocks(keys: Mapping[str, object], prefix: str) -> int:
    indices = {k[len(prefix) :].split(".", 1)[0] for k in keys if k.startswith(prefix)}
    return 1 + max((int(i) for i in indices if i.isdigit()), default=-1)


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention holding ``nn.MultiheadAttention``'s parameter names.

    On the CPU, :meth:`pack` moves the input projection into packed linears (``cpu_linear``): one for q, k, v
    together when the module attends to its own input, else one for q and one for k, v."""

    def __init__(self, dim: int, heads: int, self_attention: bool = True) -> None:
        super().__init__()
        self.dim, self.heads, self.self_attention = dim, heads, self_attention
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        self.in_packed: nn.ModuleDict | None = None

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, H, N, D/H]
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.dim // self.heads).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:  # [B, H, N, D/H] -> [B, N, D]
        b, _, n, _ = x.shape
        return x.transpose(1, 2).reshape(b, n, self.dim)

    def project(self, x: torch.Tensor, part: str) -> torch.Tensor:
        """The input projection's rows for ``part``: "qkv" (all), "q" or "kv"."""
        lo, hi = _PARTS[part](self.dim)
        if self.in_packed is None:
            return F.linear(x, self.in_proj_weight[lo:hi], self.in_proj_bias[lo:hi])
        if part in self.in_packed:
            return self.in_packed[part](x)
        return self.in_packed["qkv"](x)[..., lo:hi]

    def pack(self) -> None:
        from lib_llmcond.cpu_linear import PackedLinear, can_pack, packed

        self.out_proj = packed(self.out_proj)
        if self.in_packed is not None or not can_pack(self.in_proj_weight):
            return
        w, b = self.in_proj_weight, self.in_proj_bias
        parts = ("qkv",) if self.self_attention else ("q", "kv")
        self.in_packed = nn.ModuleDict(
            {p: PackedLinear(w[slice(*_PARTS[p](self.dim))], b[slice(*_PARTS[p](self.dim))]) for p in parts}
        )
        del self.in_proj_weight, self.in_proj_bias  # the packed copies replace them

    def dense_in_proj(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The input projection as ``nn.MultiheadAttention`` holds it ([3D, D] weight, [3D] bias; rows q, k, v),
        packed or not."""
        if self.in_packed is None:
            return self.in_proj_weight, self.in_proj_bias
        parts = list(self.in_packed.values())  # "qkv", or "q" then "kv"
        return torch.cat([p.dense_weight() for p in parts]), torch.cat([p.bias for p in parts])

    def set_in_proj(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Replace the input projection; packed again when it was packed."""
        was_packed, self.in_packed = self.in_packed is not None, None
        self.in_proj_weight = nn.Parameter(weight, requires_grad=False)
        self.in_proj_bias = nn.Parameter(bias, requires_grad=False)
        if was_packed:
            self.pack()

    def qkv(self, query: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d = self.dim
        if query is source:
            q, k, v = self.project(query, "qkv").split(d, dim=-1)
        else:
            q = self.project(query, "q")
            k, v = self.project(source, "kv").split(d, dim=-1)
        return self._split(q), self._split(k), self._split(v)

    def forward(
        self, query: torch.Tensor, source: torch.Tensor, key_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``key_bias``: :func:`key_bias` of the keys to attend to. Every row must keep at least one key."""
        q, k, v = self.qkv(query, source)
        if q.shape[0] != k.shape[0]:
            q = q.expand(k.shape[0], -1, -1, -1)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias)
        return self.out_proj(self._merge(ctx))


_PARTS = {"qkv": lambda d: (0, 3 * d), "q": lambda d: (0, d), "kv": lambda d: (d, 3 * d)}


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + attn(LN1 x)``, then ``x + MLP(LN2 x)`` with exact GELU."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiheadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, dim))

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, key_bias)
        return x + self.mlp(self.norm2(x))


class LLMToSDXLAdapter(Adapter):
    family = "llm_to_sdxl"
    static_shapes = True

    def __init__(self, config: LLMToSDXLConfig) -> None:
        super().__init__()
        c = self.config = config
        self.llm_dim, self.max_input_tokens, self.output_tokens = c.llm_dim, c.max_input_len, c.output_len
        self.output_dim, self.pooled_dim = c.dim, c.pooled_dim
        if c.input_norm:
            self.input_norm = nn.LayerNorm(c.llm_dim)
        if c.llm_dim != c.dim:
            self.seq_projection = nn.Linear(c.llm_dim, c.dim)
        self.input_position_embeddings = nn.Parameter(torch.zeros(1, c.max_input_len, c.dim))
        self.output_position_embeddings = nn.Parameter(torch.zeros(1, c.output_len, c.dim))
        self.wide_attention_blocks = nn.ModuleList(self._block() for _ in range(c.n_wide))
        self.compression_queries = nn.Parameter(torch.zeros(1, c.output_len, c.dim))
        self.compression_attention = MultiheadAttention(c.dim, c.heads, self_attention=False)
        self.compression_norm = nn.LayerNorm(c.dim)
        self.compression_gate = nn.Sequential(nn.Linear(2 * c.dim, c.dim), nn.Sigmoid())
        self.narrow_attention_blocks = nn.ModuleList(self._block() for _ in range(c.n_narrow))
        self.pooling_attention = MultiheadAttention(c.dim, c.heads, self_attention=False)
        self.pooling_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pooled_projection = nn.Sequential(
            nn.Linear(c.dim, c.dim),
            nn.LayerNorm(c.dim),
            nn.GELU(),
            nn.Dropout(0.0),
            nn.Linear(c.dim, c.pooled_dim),
        )
        self.eval()

    def _block(self) -> TransformerBlock:
        return TransformerBlock(self.config.dim, self.config.heads, self.config.mlp_hidden)

    def _forward(
        self, hidden: torch.Tensor, mask: torch.Tensor | None, return_attention: bool
    ) -> AdapterOutput:
        b, length, _ = hidden.shape
        keep = self._input_mask(b, length, mask, hidden.device)  # [B, 512] bool
        x = self._embed(hidden)  # [B, 512, D]
        index, real = _compact(keep)  # positions of the real tokens, row by row
        alive = real.any(dim=1)  # rows with at least one real token
        real = real | ~alive[:, None]  # rows without: let them attend to something, then zero the context
        dead = None if bool(alive.all()) else alive
        x = x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))
        bias = None if bool(real.all()) else key_bias(real)
        for block in self.wide_attention_blocks:
            x = _block_forward(block, x, bias, dead)
        y, probs = self._compress(x, bias, dead)
        y, pooled = self._narrow_and_pool(y)
        attention = (
            _scatter_attention(probs, index, real & alive[:, None], length) if return_attention else None
        )
        return AdapterOutput(crossattn=y, pooled=pooled, attention=attention)

    def forward_static(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        keep: torch.Tensor,
        *,
        return_attention: bool = False,
    ) -> AdapterOutput:
        """:meth:`Adapter.forward_static` without data-dependent shapes or host syncs: the caller's slots
        play the part of ``_compact``'s gathered positions (the same exact rewrite), so a CUDA graph can hold
        it. Padded slots act only as queries of the wide blocks, never as keys."""
        hidden = hidden.to(device=self.device, dtype=torch.float32)
        with fp32_inference(hidden.device):
            h = self.input_norm(hidden) if self.config.input_norm else hidden
            if self.config.llm_dim != self.config.dim:
                h = self.seq_projection(h)
            x = h + self.input_position_embeddings[0][positions]
            bias = key_bias(keep)  # once: SDPA would turn a boolean mask into this in every block
            for block in self.wide_attention_blocks:
                x = block(x, bias)
            y, probs = self._compress(x, bias, None)
            y, pooled = self._narrow_and_pool(y)
            attention = probs.mean(dim=1) * keep[:, None, :] if return_attention else None
        return AdapterOutput(crossattn=y, pooled=pooled, attention=attention)

    def _narrow_and_pool(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The narrow blocks over the compressed tokens, then the pooling head: (crossattn, pooled)."""
        for block in self.narrow_attention_blocks:
            y = block(y)
        token = self.pooling_token.expand(y.shape[0], -1, -1)
        return y, self.pooled_projection(self.pooling_attention(token, y).squeeze(1))

    def _input_mask(
        self, b: int, length: int, mask: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor:
        """Given mask cut/padded with False to 512; without one: the real length (all of it when >= 512)."""
        n = self.max_input_tokens
        if mask is not None:
            keep = torch.zeros(b, n, dtype=torch.bool, device=device)
            keep[:, : min(length, n)] = mask[:, :n]
            return keep
        return (torch.arange(n, device=device) < length)[None].expand(b, -1)

    def _embed(self, hidden: torch.Tensor) -> torch.Tensor:
        h = hidden[:, : self.max_input_tokens]
        if self.config.input_norm:
            h = self.input_norm(h)
        if self.config.llm_dim != self.config.dim:
            h = self.seq_projection(h)
        h = F.pad(h, (0, 0, 0, self.max_input_tokens - h.shape[1]))  # zeros after the projection, as REF
        return h + self.input_position_embeddings

    def _compress(
        self, x: torch.Tensor, bias: torch.Tensor | None, dead: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """308 learned queries attend to the wide output; always the explicit path, so the outputs do not
        depend on whether the attention map is asked for."""
        attn, d = self.compression_attention, self.config.dim
        q, gate_q = self._query_constants()
        k, v = attn.project(x, "kv").split(d, dim=-1)
        k, v = attn._split(k), attn._split(v)
        scores = torch.matmul(q, k.transpose(-1, -2))
        if bias is not None:
            scores = scores + bias
        probs = scores.softmax(dim=-1)  # [B, H, T, S]
        ctx = attn._merge(torch.matmul(probs, v))
        if dead is not None:
            ctx = ctx * dead[:, None, None]
        c = attn.out_proj(ctx)
        gate = torch.sigmoid(gate_q + F.linear(c, self.compression_gate[0].weight[:, d:]))
        queries = self.compression_queries
        y = self.compression_norm(gate * c + (1 - gate) * queries)
        return y + self.output_position_embeddings, probs

    def _query_constants(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What depends on the learned queries only: their scaled projection [1, H, T, hd] and the queries'
        half of the gate's input, ``W_g[:, :D] q + b_g``. Cached until a parameter is replaced or changed."""
        attn, gate, d = self.compression_attention, self.compression_gate[0], self.config.dim
        params = (self.compression_queries, gate.weight, gate.bias, *attn.parameters())
        key = tuple((p.data_ptr(), _version(p), p.device) for p in params)
        if getattr(self, "_constants_key", None) != key:
            queries = self.compression_queries
            q = attn._split(attn.project(queries, "q"))
            q = q * (1.0 / math.sqrt(q.shape[-1]))
            self._constants = (q, F.linear(queries, gate.weight[:, :d], gate.bias))
            self._constants_key = key
        return self._constants

    def forget_constants(self) -> None:
        """Drop the cache of :meth:`_query_constants` (a copy whose weights were replaced must recompute it)."""
        self.__dict__.pop("_constants_key", None)
        self.__dict__.pop("_constants", None)

    def pack_for_cpu(self) -> None:
        """Pre-pack the linears for oneDNN (``cpu_linear``) when the module computes on the CPU. The gate
        stays dense: its two halves are used apart."""
        from lib_llmcond.cpu_linear import packed

        for block in (*self.wide_attention_blocks, *self.narrow_attention_blocks):
            block.attn.pack()
            block.mlp[0], block.mlp[2] = packed(block.mlp[0]), packed(block.mlp[2])
        self.compression_attention.pack()
        self.pooling_attention.pack()
        if self.config.llm_dim != self.config.dim:
            self.seq_projection = packed(self.seq_projection)
        self.pooled_projection[0] = packed(self.pooled_projection[0])
        self.pooled_projection[4] = packed(self.pooled_projection[4])


def _version(p: torch.Tensor) -> int:
    """The in-place version counter; inference tensors (made under ``torch.inference_mode``, as Forge loads
    models) have none, and cannot be changed in place either, so their address alone identifies them."""
    try:
        return p._version
    except RuntimeError:
        return -1


def key_bias(keep: torch.Tensor) -> torch.Tensor:
    """Keys to attend to, ``keep`` [B, S] bool, as the additive mask [B, 1, 1, S] (0 / -inf) that SDPA makes of
    a boolean one; adding it to scores is the same as filling the blocked ones with -inf."""
    bias = torch.zeros(keep.shape, dtype=torch.float32, device=keep.device).masked_fill_(~keep, float("-inf"))
    return bias[:, None, None, :]


def _block_forward(
    block: TransformerBlock, x: torch.Tensor, bias: torch.Tensor | None, dead: torch.Tensor | None
) -> torch.Tensor:
    if dead is None:
        return block(x, bias)
    h = block.norm1(x)
    q, k, v = block.attn.qkv(h, h)
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    x = x + block.attn.out_proj(block.attn._merge(ctx) * dead[:, None, None])
    return x + block.mlp(block.norm2(x))


def _compact(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the indices of the True positions first (in order), then the others; cut to the longest row.

    Returns ``index`` [B, n] and ``real`` [B, n] (True where ``index`` is a real position)."""
    counts = keep.sum(dim=1)
    n = max(int(counts.max()) if keep.numel() else 0, 1)
    order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :n]
    real = torch.arange(n, device=keep.device)[None] < counts[:, None]
    return order, real


def _scatter_attention(
    probs: torch.Tensor, index: torch.Tensor, real: torch.Tensor, length: int
) -> torch.Tensor:
    """Head-averaged compression attention back on the caller's input positions: [B, T, length]."""
    avg = probs.mean(dim=1) * real[:, None, :]  # [B, T, n]
    b, t, _ = avg.shape
    full = avg.new_zeros(b, t, max(length, int(index.max()) + 1))
    full.scatter_(2, index[:, None, :].expand(-1, t, -1), avg)
    return full[:, :, :length]
