"""Family A against an independent formulation of reference.md §2, written with explicit matmuls, our own
softmax, LayerNorm and GELU, in float64, on the literal 512-position sequence (no compaction)."""

from __future__ import annotations

import math

import pytest
import torch

from lib_llmcond.adapters.llm_to_sdxl import PRESETS, LLMToSDXLAdapter, LLMToSDXLConfig
from lib_llmcond.tiny.adapter import llm_to_sdxl_state_dict

HEADS = 16
SMALL = LLMToSDXLConfig(
    llm_dim=40, n_wide=2, n_narrow=2, dim=64, mlp_hidden=96, output_len=12, max_input_len=24
)


# ---- the oracle -------------------------------------------------------------------------------------------
def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def softmax(s):
    e = torch.exp(s - s.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def linear(x, sd, name):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def attention(sd, name, xq, xkv, pad=None):
    """pad: [B, S] bool, True = padding (ignored as a key). Returns output and head-averaged weights."""
    d = xq.shape[-1]
    w, b = sd[f"{name}.in_proj_weight"], sd[f"{name}.in_proj_bias"]
    q, k, v = (xq @ w[:d].T + b[:d]), (xkv @ w[d : 2 * d].T + b[d : 2 * d]), (xkv @ w[2 * d :].T + b[2 * d :])
    bsz, t, s, hd = xkv.shape[0], xq.shape[1], xkv.shape[1], d // HEADS
    q = q.expand(bsz, -1, -1).reshape(bsz, t, HEADS, hd).permute(0, 2, 1, 3)
    k = k.reshape(bsz, s, HEADS, hd).permute(0, 2, 1, 3)
    v = v.reshape(bsz, s, HEADS, hd).permute(0, 2, 1, 3)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if pad is not None:
        scores = scores.masked_fill(pad[:, None, None, :], -math.inf)
    p = softmax(scores)
    out = (p @ v).permute(0, 2, 1, 3).reshape(bsz, t, d)
    return linear(out, sd, f"{name}.out_proj"), p.mean(dim=1)


def block(sd, name, x, pad=None):
    h = layer_norm(x, sd[f"{name}.norm1.weight"], sd[f"{name}.norm1.bias"])
    x = x + attention(sd, f"{name}.attn", h, h, pad)[0]
    h = layer_norm(x, sd[f"{name}.norm2.weight"], sd[f"{name}.norm2.bias"])
    return x + linear(gelu(linear(h, sd, f"{name}.mlp.0")), sd, f"{name}.mlp.2")


def oracle(sd, cfg, hidden, mask=None):
    sd = {k: v.double() for k, v in sd.items()}
    x = hidden.double()
    bsz, length, _ = x.shape
    n = cfg.max_input_len
    if cfg.input_norm:
        x = layer_norm(x, sd["input_norm.weight"], sd["input_norm.bias"])
    if "seq_projection.weight" in sd:
        x = linear(x, sd, "seq_projection")
    if length >= n:
        x = x[:, :n]
        keep = None if mask is None else mask[:, :n].bool()
    else:
        x = torch.cat([x, x.new_zeros(bsz, n - length, x.shape[-1])], dim=1)
        if mask is None:
            keep = torch.zeros(bsz, n, dtype=torch.bool)
            keep[:, :length] = True
        else:
            keep = torch.cat([mask.bool(), torch.zeros(bsz, n - length, dtype=torch.bool)], dim=1)
    pad = None if keep is None else ~keep
    x = x + sd["input_position_embeddings"]
    for i in range(cfg.n_wide):
        x = block(sd, f"wide_attention_blocks.{i}", x, pad)
    queries = sd["compression_queries"].expand(bsz, -1, -1)
    c, weights = attention(sd, "compression_attention", sd["compression_queries"], x, pad)
    g = torch.sigmoid(linear(torch.cat([queries, c], dim=-1), sd, "compression_gate.0"))
    y = layer_norm(g * c + (1 - g) * queries, sd["compression_norm.weight"], sd["compression_norm.bias"])
    y = y + sd["output_position_embeddings"]
    for i in range(cfg.n_narrow):
        y = block(sd, f"narrow_attention_blocks.{i}", y)
    pooled, _ = attention(sd, "pooling_attention", sd["pooling_token"], y)
    p = linear(pooled[:, 0], sd, "pooled_projection.0")
    p = gelu(layer_norm(p, sd["pooled_projection.1.weight"], sd["pooled_projection.1.bias"]))
    p = linear(p, sd, "pooled_projection.4")
    return y, p, weights


def make(cfg, seed=0):
    sd = llm_to_sdxl_state_dict(cfg, seed)
    module = LLMToSDXLAdapter(cfg)
    module.load_state_dict(sd, strict=True)
    return module, sd


def check(module, sd, cfg, hidden, mask=None, tol=1e-4):
    out = module(hidden, mask, return_attention=True)
    y, p, w = oracle(sd, cfg, hidden, mask)
    length = hidden.shape[1]
    w = (
        w[:, :, :length]
        if length <= cfg.max_input_len
        else torch.cat([w, w.new_zeros(w.shape[0], w.shape[1], length - w.shape[2])], dim=-1)
    )
    assert out.crossattn.dtype == torch.float32
    assert (out.crossattn.double() - y).abs().max().item() <= tol
    assert (out.pooled.double() - p).abs().max().item() <= tol
    assert (out.attention.double() - w).abs().max().item() <= 1e-5
    return out


# ---- small shapes: every mask rule ------------------------------------------------------------------------
@pytest.mark.parametrize("length", [1, 5, 24, 30])
@pytest.mark.parametrize("with_mask", [False, True])
def test_small_matches_oracle(length, with_mask):
    module, sd = make(SMALL)
    g = torch.Generator().manual_seed(length)
    hidden = torch.randn(3, length, SMALL.llm_dim, generator=g)
    mask = None
    if with_mask:
        mask = torch.ones(3, length, dtype=torch.long)
        mask[1, : length // 2] = 0  # left padding
        mask[2, (length + 1) // 2 :] = 0  # right padding
    check(module, sd, SMALL, hidden, mask)


def test_exactly_max_length_without_mask_has_no_mask():
    module, sd = make(SMALL)
    hidden = torch.randn(2, SMALL.max_input_len, SMALL.llm_dim)
    out = check(module, sd, SMALL, hidden)
    assert torch.allclose(out.attention.sum(-1), torch.ones(2, SMALL.output_len), atol=1e-5)


def test_input_norm_and_no_projection():
    cfg = LLMToSDXLConfig(llm_dim=64, n_wide=1, n_narrow=1, dim=64, mlp_hidden=80, output_len=6, max_input_len=16,
                          input_norm=True)  # fmt: skip
    module, sd = make(cfg)
    assert not hasattr(module, "seq_projection")
    check(module, sd, cfg, torch.randn(2, 9, 64))


# ---- full-size shapes ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_gemma_preset_full_size_matches_oracle():
    cfg = PRESETS["gemma"]
    module, sd = make(cfg, seed=1)
    hidden = torch.randn(2, 40, cfg.llm_dim) * 3
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, 30:] = 0
    check(module, sd, cfg, hidden, mask)


@pytest.mark.slow
def test_t5gemma_preset_full_size_longer_than_512_matches_oracle():
    cfg = PRESETS["t5gemma"]
    module, sd = make(cfg, seed=2)
    check(module, sd, cfg, torch.randn(1, 520, cfg.llm_dim))


# ---- behaviour ----------------------------------------------------------------------------------------------
def test_return_attention_changes_nothing_and_rows_sum_to_one():
    module, _ = make(SMALL)
    hidden = torch.randn(2, 10, SMALL.llm_dim)
    mask = torch.tensor([[1] * 10, [0] * 4 + [1] * 6])
    plain = module(hidden, mask)
    out = module(hidden, mask, return_attention=True)
    assert plain.attention is None
    assert torch.equal(plain.crossattn, out.crossattn) and torch.equal(plain.pooled, out.pooled)
    assert out.attention.shape == (2, SMALL.output_len, 10)
    assert torch.allclose(out.attention.sum(-1), torch.ones(2, SMALL.output_len), atol=1e-5)
    assert out.attention[1, :, :4].abs().max() == 0  # padded inputs get no attention


def test_batch_rows_equal_single_rows():
    module, _ = make(SMALL)
    hidden = torch.randn(3, 12, SMALL.llm_dim)
    mask = torch.tensor([[1] * 12, [0] * 5 + [1] * 7, [1] * 3 + [0] * 9])
    batch = module(hidden, mask, return_attention=True)
    for i in range(3):
        single = module(hidden[i : i + 1], mask[i : i + 1], return_attention=True)
        assert torch.allclose(batch.crossattn[i], single.crossattn[0], atol=1e-5)
        assert torch.allclose(batch.pooled[i], single.pooled[0], atol=1e-5)
        assert torch.allclose(batch.attention[i], single.attention[0], atol=1e-6)
    # a row alone without a mask and its real length equals the masked, right-padded row
    alone = module(hidden[2:3, :3])
    assert torch.allclose(batch.crossattn[2], alone.crossattn[0], atol=1e-5)


def test_deterministic_fp32_and_autocast_has_no_effect():
    module, _ = make(SMALL)
    hidden = torch.randn(2, 9, SMALL.llm_dim).to(torch.bfloat16)
    first = module(hidden)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        second = module(hidden)
    assert first.crossattn.dtype == second.crossattn.dtype == torch.float32
    assert torch.equal(first.crossattn, second.crossattn) and torch.equal(first.pooled, second.pooled)


def test_train_mode_is_refused_silently_and_no_grad():
    module, _ = make(SMALL)
    module.train()
    assert not module.training
    out = module(torch.randn(1, 4, SMALL.llm_dim, requires_grad=True))
    assert not out.crossattn.requires_grad


def test_rows_without_any_real_token_give_finite_output():
    module, _ = make(SMALL)
    hidden = torch.randn(2, 6, SMALL.llm_dim)
    out = module(hidden, torch.tensor([[0] * 6, [1] * 6]), return_attention=True)
    assert torch.isfinite(out.crossattn).all() and torch.isfinite(out.pooled).all()
    assert out.attention[0].abs().max() == 0
    empty = module(torch.zeros(1, 0, SMALL.llm_dim))
    assert torch.isfinite(empty.crossattn).all() and empty.crossattn.shape == (1, SMALL.output_len, SMALL.dim)
    assert torch.allclose(empty.crossattn[0], out.crossattn[0], atol=1e-5)


def test_wrong_input_width_is_an_error():
    module, _ = make(SMALL)
    with pytest.raises(ValueError, match="hidden states"):
        module(torch.randn(1, 4, SMALL.llm_dim + 1))


@pytest.mark.parametrize(
    ("name", "tensors", "params"), [("gemma", 84, 305_253_632), ("t5gemma", 96, 357_971_200)]
)
def test_preset_tensor_and_parameter_counts(name, tensors, params):
    with torch.device("meta"):
        module = LLMToSDXLAdapter(PRESETS[name])
    sd = module.state_dict()
    assert len(sd) == tensors
    assert sum(t.numel() for t in sd.values()) == params


def test_attention_weights_follow_torch_multihead_attention_convention():
    """REF files hold ``nn.MultiheadAttention`` tensors: q, k, v stacked in ``in_proj_weight``, True in
    ``key_padding_mask`` = ignore. Our attention on the same tensors gives the same result."""
    from lib_llmcond.adapters.llm_to_sdxl import MultiheadAttention, key_bias

    torch_mha = torch.nn.MultiheadAttention(64, HEADS, batch_first=True).eval()
    for p in torch_mha.parameters():
        torch.nn.init.normal_(p, std=0.2)
    ours = MultiheadAttention(64, HEADS)
    ours.load_state_dict(torch_mha.state_dict(), strict=True)
    q, kv = torch.randn(2, 5, 64), torch.randn(2, 9, 64)
    keep = torch.tensor([[True] * 9, [False] * 3 + [True] * 6])
    with torch.no_grad():
        expected, _ = torch_mha(q, kv, kv, key_padding_mask=~keep, need_weights=False)
        assert torch.allclose(ours(q, kv, key_bias(keep)), expected, atol=1e-5)
        expected_self, _ = torch_mha(kv, kv, kv, need_weights=False)
        assert torch.allclose(ours(kv, kv), expected_self, atol=1e-5)
