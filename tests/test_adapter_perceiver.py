"""Family B (Perceiver resampler): an independent float64 formulation that reads the *file's own* key names
for each layout, compared with the loaded module; layout equivalences; refusals."""

from __future__ import annotations

import math
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from lib_llmcond.adapters.loader import inspect_adapter, load_adapter
from lib_llmcond.errors import ModelFileError
from lib_llmcond.tiny.adapter import write_tiny_adapter

BASE = dict(llm_dim=40, dim=64, n_wide=2, family="perceiver", num_latents=7, inner=64, heads=4, ff_hidden=96,
            out_dim=64, pooled_dim=24, max_input_len=30)  # fmt: skip


def write(path, **kw):
    return write_tiny_adapter(path, **{**BASE, **kw})


# ---- oracle -------------------------------------------------------------------------------------------------
def ln(x, sd, name):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def lin(x, sd, name):
    y = x @ sd[f"{name}.weight"].T
    return y + sd[f"{name}.bias"] if f"{name}.bias" in sd else y


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def attend(q, k, v, heads, key_mask=None):
    b, n, inner = q.shape
    hd = inner // heads
    q, k, v = (t.reshape(b, t.shape[1], heads, hd).permute(0, 2, 1, 3) for t in (q, k, v))
    s = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], -math.inf)
    p = torch.exp(s - s.max(-1, keepdim=True).values)
    p = p / p.sum(-1, keepdim=True)
    return (p @ v).permute(0, 2, 1, 3).reshape(b, n, inner), p.mean(1)


def ff(x, sd, prefix):
    idx = sorted({int(k.split(".")[-2]) for k in sd if re.fullmatch(rf"{re.escape(prefix)}\.\d+\.weight", k)})
    for i in idx:  # a Sequential of [LayerNorm,] Linear [, LayerNorm], GELU, Linear: GELU before the last one
        name = f"{prefix}.{i}"
        if i == idx[-1] and len(idx) > 1:
            x = gelu(x)
        x = ln(x, sd, name) if sd[f"{name}.weight"].dim() == 1 else lin(x, sd, name)
    return x


def oracle(path, hidden, mask, heads, layout, max_len=30):
    sd = {k: v.double() for k, v in load_file(str(path)).items()}
    x, m = hidden.double()[:, :max_len], None if mask is None else mask[:, :max_len].bool()
    if "pos_emb.weight" in sd:
        x = x + sd["pos_emb.weight"][: x.shape[1]]
    if "proj_in.weight" in sd:
        x = lin(x, sd, "proj_in")
    if "media_pos_emb" in sd:
        x = x + sd["media_pos_emb"][0]
    lat = sd["latents"].reshape(-1, sd["latents"].shape[-1])[None].expand(x.shape[0], -1, -1)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    maps = []
    for i in range(depth):
        if layout == "lucidrains":
            a = f"layers.{i}.0"
            xn, qn = ln(x, sd, f"{a}.norm_media"), ln(lat, sd, f"{a}.norm_latents")
            kv = lin(torch.cat([xn, qn], 1), sd, f"{a}.to_kv")
            k, v = kv.chunk(2, dim=-1)
            km = (
                None
                if m is None
                else torch.cat([m, torch.ones(m.shape[0], lat.shape[1], dtype=torch.bool)], 1)
            )
            ctx, p = attend(lin(qn, sd, f"{a}.to_q"), k, v, heads, km)
            lat = lat + lin(ctx, sd, f"{a}.to_out")
            p = p[..., : x.shape[1]]
            maps.append(p / p.sum(-1, keepdim=True))
            lat = lat + ff(lat, sd, f"layers.{i}.1")
        else:
            a = f"layers.{i}.cross_attn"
            xn, qn = ln(x, sd, f"layers.{i}.norm_kv"), ln(lat, sd, f"layers.{i}.norm_q")
            ctx, p = attend(lin(qn, sd, f"{a}.q_proj"), lin(xn, sd, f"{a}.k_proj"), lin(xn, sd, f"{a}.v_proj"),
                            heads, m)  # fmt: skip
            lat = lat + lin(ctx, sd, f"{a}.out_proj")
            maps.append(p)
            if f"layers.{i}.self_attn.q_proj.weight" in sd:
                s = f"layers.{i}.self_attn"
                h = ln(lat, sd, f"layers.{i}.norm_self")
                ctx, _ = attend(
                    lin(h, sd, f"{s}.q_proj"), lin(h, sd, f"{s}.k_proj"), lin(h, sd, f"{s}.v_proj"), heads
                )
                lat = lat + lin(ctx, sd, f"{s}.out_proj")
            lat = lat + ff(lat, sd, f"layers.{i}.ff")
    for name in ("norm", "proj_out", "norm_out"):
        if f"{name}.weight" in sd:
            lat = ln(lat, sd, name) if sd[f"{name}.weight"].dim() == 1 else lin(lat, sd, name)
    pooled = lat.mean(1)
    pooled = lin(pooled, sd, "pooled_proj") if "pooled_proj.weight" in sd else ff(pooled, sd, "pooled_proj")
    return lat, pooled, torch.stack(maps).mean(0)


def check(path, layout, heads=4, length=9, tol=1e-4):
    adapter = load_adapter(path)
    g = torch.Generator().manual_seed(length)
    hidden = torch.randn(2, length, adapter.llm_dim, generator=g)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, :3] = 0
    out = adapter(hidden, mask, return_attention=True)
    lat, pooled, att = oracle(path, hidden, mask, heads, layout, adapter.max_input_tokens)
    assert (out.crossattn.double() - lat).abs().max() <= tol
    assert (out.pooled.double() - pooled).abs().max() <= tol
    att = torch.nn.functional.pad(att, (0, length - att.shape[-1]))
    assert (out.attention.double() - att).abs().max() <= 1e-5
    return adapter, out


# ---- layouts against the oracle -------------------------------------------------------------------------------
def test_plain_layout_matches_oracle(tmp_path):
    path = write(tmp_path / "p.safetensors", layout="plain")
    adapter, _ = check(path, "plain")
    assert adapter.config.heads == 4 and not adapter.config.kv_with_latents


def test_plain_layout_with_self_attention_and_deep_heads(tmp_path):
    path = write(tmp_path / "p.safetensors", layout="plain", self_attn=True, proj_out=True, out_dim=48,
                 norm_out=True, pooled_hidden=40, pooled_norm=True)  # fmt: skip
    adapter, out = check(path, "plain")
    assert out.crossattn.shape == (2, 7, 48) and adapter.output_dim == 48


def test_lucidrains_ip_adapter_style_matches_oracle(tmp_path):
    """IP-Adapter's Resampler: pos_emb, proj_in, bias-free attention and FF, proj_out + norm_out, [1, N, D]
    latents, norm1/norm2 names."""
    path = write(tmp_path / "l.safetensors", layout="lucidrains", attn_bias=False, ff_bias=False, pos_emb=True,
                 norm=False, proj_out=True, norm_out=True)  # fmt: skip
    sd = load_file(str(path))
    sd["latents"] = sd["latents"][None].contiguous()
    sd = {k.replace("norm_media", "norm1").replace("norm_latents", "norm2"): v for k, v in sd.items()}
    save_file(sd, str(tmp_path / "ip.safetensors"), metadata={"heads": "4"})
    sd_oracle = {k.replace("norm1", "norm_media").replace("norm2", "norm_latents"): v for k, v in sd.items()}
    save_file(sd_oracle, str(tmp_path / "oracle.safetensors"))
    adapter = load_adapter(tmp_path / "ip.safetensors")
    assert adapter.config.kv_with_latents and adapter.max_input_tokens == 30
    hidden, mask = torch.randn(2, 12, 40), torch.tensor([[1] * 12, [0] * 4 + [1] * 8])
    out = adapter(hidden, mask)
    lat, pooled, _ = oracle(tmp_path / "oracle.safetensors", hidden, mask, 4, "lucidrains")
    assert (out.crossattn.double() - lat).abs().max() <= 1e-4 and (
        out.pooled.double() - pooled
    ).abs().max() <= 1e-4


def test_flamingo_style_without_proj_in_matches_oracle(tmp_path):
    path = write(tmp_path / "f.safetensors", layout="lucidrains", llm_dim=64, proj_in=False, media_pos_emb=2,
                 attn_bias=False, ff_bias=False)  # fmt: skip
    adapter, _ = check(path, "lucidrains", length=40)  # longer than max_input_len (30, from the metadata)
    assert adapter.max_input_tokens == 30


# ---- equivalent spellings -----------------------------------------------------------------------------------
def assert_close(a, b):
    assert (a.crossattn - b.crossattn).abs().max() <= 2e-6 and (a.pooled - b.pooled).abs().max() <= 2e-6


def test_plain_spellings_give_the_same_outputs(tmp_path):
    path = write(tmp_path / "p.safetensors", layout="plain", self_attn=True)
    sd = load_file(str(path))
    hidden = torch.randn(1, 6, 40)
    expected = load_adapter(path)(hidden)
    fused = dict(sd)
    for i in range(2):
        for kind in ("weight", "bias"):
            for a in ("cross_attn", "self_attn"):
                parts = [fused.pop(f"layers.{i}.{a}.{p}_proj.{kind}") for p in "qkv"]
                fused[f"layers.{i}.{a}.in_proj_{kind}"] = torch.cat(parts)
    numbered = {re.sub(r"norm_q\b", "norm1", re.sub(r"norm_self", "norm2", k)): v for k, v in sd.items()}
    numbered = {k: v for k, v in numbered.items() if not re.search(r"ff\.0\.", k)}
    numbered.update({k.replace("ff.0.", "norm3."): v for k, v in sd.items() if re.search(r"ff\.0\.", k)})
    o_proj = {k.replace("cross_attn.out_proj", "cross_attn.o_proj"): v for k, v in sd.items()}
    prefixed = {f"resampler.{k}": v for k, v in sd.items()}
    for name, table in (("fused", fused), ("numbered", numbered), ("o_proj", o_proj), ("prefixed", prefixed)):
        p = tmp_path / f"{name}.safetensors"
        save_file(table, str(p), metadata={"heads": "4"})
        assert_close(load_adapter(p)(hidden), expected)


def test_heads_from_pickle_config_and_default_head_size(tmp_path):
    st = write(tmp_path / "a.safetensors", layout="plain")
    pth = write(tmp_path / "a.pth", layout="plain")
    hidden = torch.randn(1, 5, 40)
    assert_close(load_adapter(pth)(hidden), load_adapter(st)(hidden))
    save_file(load_file(str(st)), str(tmp_path / "nometa.safetensors"))
    assert load_adapter(tmp_path / "nometa.safetensors").config.heads == 1  # inner 64 / head size 64


# ---- behaviour ----------------------------------------------------------------------------------------------
def test_attention_rows_batch_rows_and_cut(tmp_path):
    adapter = load_adapter(write(tmp_path / "p.safetensors", layout="lucidrains"))
    hidden = torch.randn(3, 35, 40)
    mask = torch.ones(3, 35, dtype=torch.long)
    mask[1, :10] = 0
    mask[2, 20:] = 0
    plain = adapter(hidden, mask)
    out = adapter(hidden, mask, return_attention=True)
    assert torch.equal(plain.crossattn, out.crossattn) and torch.equal(plain.pooled, out.pooled)
    assert out.attention.shape == (3, 7, 35)
    assert torch.allclose(out.attention.sum(-1), torch.ones(3, 7), atol=1e-5)
    assert out.attention[1, :, :10].abs().max() == 0 and out.attention[:, :, 30:].abs().max() == 0
    for i in range(3):
        single = adapter(hidden[i : i + 1], mask[i : i + 1])
        assert torch.allclose(single.crossattn[0], out.crossattn[i], atol=1e-5)
    cut = adapter(hidden[:, :30], mask[:, :30])
    assert torch.allclose(cut.crossattn, out.crossattn, atol=1e-6)


def test_inspect_perceiver(tmp_path):
    info = inspect_adapter(write(tmp_path / "p.safetensors", layout="plain"))
    assert (info.family, info.layout, info.llm_dim, info.output_tokens, info.blocks) == (
        "perceiver", "plain", 40, 7, {"layers": 2},
    )  # fmt: skip


# ---- refusals -------------------------------------------------------------------------------------------------
def refused(tmp_path, table, *needles):
    p = tmp_path / "bad.safetensors"
    save_file(table, str(p))
    with pytest.raises(ModelFileError) as err:
        load_adapter(p)
    for needle in (str(p), *needles):
        assert needle in str(err.value), str(err.value)


def test_unknown_perceiver_layout_is_refused_with_its_keys(tmp_path):
    table = {"latents": torch.zeros(7, 64), "layers.0.attention.weight": torch.zeros(64, 64)}
    refused(tmp_path, table, "unknown layout", "layers.0.attention.weight [64, 64]")


def test_unplaceable_key_is_refused(tmp_path):
    sd = load_file(str(write(tmp_path / "p.safetensors", layout="plain")))
    sd["layers.0.gate.weight"] = torch.zeros(3)
    refused(tmp_path, sd, "cannot place: layers.0.gate.weight")


def test_missing_pooled_head_is_refused(tmp_path):
    sd = load_file(str(write(tmp_path / "p.safetensors", layout="plain")))
    sd = {k: v for k, v in sd.items() if not k.startswith("pooled_proj")}
    refused(tmp_path, sd, "missing pooled.fc1.weight")


def test_wrong_shape_in_a_layer_is_refused(tmp_path):
    sd = load_file(str(write(tmp_path / "p.safetensors", layout="lucidrains")))
    sd["layers.1.0.to_out.weight"] = torch.zeros(64, 32)
    refused(tmp_path, sd, "wrong shapes", "[64, 32]")


def test_two_keys_for_one_place_and_mismatched_parts_are_refused(tmp_path):
    sd = load_file(str(write(tmp_path / "p.safetensors", layout="plain")))
    both = dict(
        sd,
        **{
            "layers.0.norm1.weight": sd["layers.0.norm_q.weight"].clone(),
            "layers.0.norm1.bias": sd["layers.0.norm_q.bias"].clone(),
        },
    )
    refused(tmp_path, both, "all map to layers.0.cross.norm_q.weight")
    sd2 = load_file(str(write(tmp_path / "l.safetensors", layout="lucidrains")))
    sd2["layers.0.0.to_kv.weight"] = torch.zeros(128, 32)
    refused(tmp_path, sd2, "parts of layers.0.cross.in_proj_weight differ in width")
