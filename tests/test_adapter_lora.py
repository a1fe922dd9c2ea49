"""Adapter LoRAs (kohya ``lora_te_*`` keys) merged into a patched copy, against oracles written from the formula
``W + m * (alpha / rank) * up @ down`` and from the reference node pack's loader (concatenated ``up``, ``q``'s
``down``); refusals that never crash."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lib_llmcond.adapters import load_adapter
from lib_llmcond.adapters.lora import PREFIX, patch_adapter, stem_table
from lib_llmcond.tiny.adapter import save_tensors, write_tiny_adapter

SMALL = dict(llm_dim=40, n_wide=1, n_narrow=1, dim=64, mlp_hidden=96, output_len=10, max_input_len=20)
D = SMALL["dim"]
ATTN = "wide_attention_blocks.0.attn"


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    return write_tiny_adapter(tmp_path_factory.mktemp("a") / "adapter.safetensors", **SMALL)


@pytest.fixture(scope="module")
def state(base_file):
    """The base adapter's own tensors (REF names), the oracles' starting point."""
    from safetensors.torch import load_file

    return load_file(str(base_file))


def factors(seed, out_f, in_f, rank=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_f, rank, generator=g) * 0.1, torch.randn(rank, in_f, generator=g) * 0.1


def write_lora(path, stems: dict, alpha=2.0, extra: dict | None = None, dtype=torch.float32):
    """``stems``: stem (without the prefix) -> (up, down). Plus UNet and CLIP keys the adapter must ignore."""
    sd = {
        "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.randn(8, 4),
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.randn(4, 8),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(4, 8),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.randn(8, 4),
    }
    for name, (up, down) in stems.items():
        sd[f"{PREFIX}{name}.lora_up.weight"] = up
        sd[f"{PREFIX}{name}.lora_down.weight"] = down
        if alpha is not None:
            sd[f"{PREFIX}{name}.alpha"] = torch.tensor(float(alpha))
    sd.update(extra or {})
    save_file({k: v.to(dtype).contiguous() for k, v in sd.items()}, str(path))
    return path


def qkv_stems(downs_equal: bool, seed=0):
    out = {}
    for i, w in enumerate("qkv"):
        up, down = factors(seed + i, D, D)
        out[f"wide_attention_blocks_0_attn_{w}_proj"] = (up, down)
    if downs_equal:
        shared = out["wide_attention_blocks_0_attn_q_proj"][1]
        out = {k: (up, shared.clone()) for k, (up, _) in out.items()}
    return out


def outputs(adapter, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 7, adapter.llm_dim, generator=g)
    mask = torch.tensor([[1] * 7, [0, 0] + [1] * 5])
    return adapter(hidden, mask)


def in_proj(adapter, path=ATTN):
    return adapter.get_submodule(path).dense_in_proj()[0]


def linear_weight(adapter, path):
    m = adapter.get_submodule(path)
    return m.dense_weight() if hasattr(m, "dense_weight") else m.weight


# -- the stem table ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pack", [True, False])
def test_stem_table_is_built_from_the_module_names(base_file, pack):
    table = stem_table(load_adapter(base_file, pack=pack))
    for key in (
        "lora_te_wide_attention_blocks_0_attn_q_proj",
        "lora_te_wide_attention_blocks_0_attn_v_proj",
        "lora_te_wide_attention_blocks_0_attn_out_proj",
        "lora_te_wide_attention_blocks_0_mlp_0",
        "lora_te_narrow_attention_blocks_0_mlp_2",
        "lora_te_compression_attention_k_proj",
        "lora_te_compression_gate_0",
        "lora_te_pooling_attention_q_proj",
        "lora_te_pooled_projection_0",
        "lora_te_pooled_projection_4",
        "lora_te_seq_projection",
    ):
        assert key in table, key
    assert table["lora_te_wide_attention_blocks_0_attn_k_proj"].rows == (D, 2 * D)
    assert table["lora_te_compression_gate_0"].module == "compression_gate.0"
    assert table["lora_te_seq_projection"].shape == (D, SMALL["llm_dim"])
    assert not [k for k in table if "packed" in k]  # the packed copies are no module of the reference


# -- the merge against the formula ---------------------------------------------------------------------------
@pytest.mark.parametrize("pack", [True, False])
def test_distinct_downs_patch_each_projection_exactly(tmp_path, base_file, state, pack):
    stems = qkv_stems(downs_equal=False)
    lin_up, lin_down = factors(9, D, D)
    gate_up, gate_down = factors(10, D, 2 * D)
    stems["wide_attention_blocks_0_attn_out_proj"] = (lin_up, lin_down)
    stems["compression_gate_0"] = (gate_up, gate_down)
    lora = write_lora(tmp_path / "x.safetensors", stems, alpha=2.0)
    base = load_adapter(base_file, pack=pack)
    before = outputs(base)
    m, scale = 0.8, 2.0 / 4

    patched = patch_adapter(base, [(lora, m)])

    assert patched.adapter is not base and patched.results[0].applied and patched.results[0].modules == 5
    want = state[f"{ATTN}.in_proj_weight"].clone()
    for i, w in enumerate("qkv"):
        up, down = stems[f"wide_attention_blocks_0_attn_{w}_proj"]
        want[i * D : (i + 1) * D] = want[i * D : (i + 1) * D] + m * scale * up @ down
    assert torch.allclose(in_proj(patched.adapter), want, atol=1e-6, rtol=0)
    want_out = state[f"{ATTN}.out_proj.weight"] + m * scale * lin_up @ lin_down
    assert torch.allclose(linear_weight(patched.adapter, f"{ATTN}.out_proj"), want_out, atol=1e-6, rtol=0)
    want_gate = state["compression_gate.0.weight"] + m * scale * gate_up @ gate_down
    assert torch.allclose(linear_weight(patched.adapter, "compression_gate.0"), want_gate, atol=1e-6, rtol=0)
    # the base is untouched
    assert torch.equal(in_proj(base), state[f"{ATTN}.in_proj_weight"])
    assert torch.equal(outputs(base).crossattn, before.crossattn)


def test_equal_downs_match_the_reference_loader(tmp_path, base_file, state):
    """The reference loader: ``in_proj_weight += m * alpha/r * cat(up_q, up_k, up_v) @ down_q``."""
    stems = qkv_stems(downs_equal=True, seed=3)
    lora = write_lora(tmp_path / "eq.safetensors", stems, alpha=8.0)
    m = 0.6
    patched = patch_adapter(load_adapter(base_file), [(lora, m)]).adapter
    ups = torch.cat([stems[f"wide_attention_blocks_0_attn_{w}_proj"][0] for w in "qkv"])
    down_q = stems["wide_attention_blocks_0_attn_q_proj"][1]
    want = state[f"{ATTN}.in_proj_weight"] + m * (8.0 / 4) * ups @ down_q
    assert torch.allclose(in_proj(patched), want, atol=1e-6, rtol=0)


def test_distinct_downs_differ_from_the_reference_loader(tmp_path, base_file, state):
    stems = qkv_stems(downs_equal=False, seed=5)
    lora = write_lora(tmp_path / "d.safetensors", stems, alpha=4.0)
    patched = patch_adapter(load_adapter(base_file), [(lora, 1.0)]).adapter
    ups = torch.cat([stems[f"wide_attention_blocks_0_attn_{w}_proj"][0] for w in "qkv"])
    shared_down = state[f"{ATTN}.in_proj_weight"] + ups @ stems["wide_attention_blocks_0_attn_q_proj"][1]
    assert not torch.allclose(in_proj(patched), shared_down, atol=1e-3)


def test_patched_copy_computes_like_an_adapter_loaded_with_the_merged_weights(tmp_path, base_file, state):
    """Outputs, not only weights: the compression queries' cached projection must follow a patched q."""
    stems = {
        "compression_attention_q_proj": factors(11, D, D),
        "compression_attention_v_proj": factors(12, D, D),
        "pooled_projection_4": factors(13, 1280, D),
        "narrow_attention_blocks_0_mlp_0": factors(14, SMALL["mlp_hidden"], D),
    }
    lora = write_lora(tmp_path / "o.safetensors", stems, alpha=None)  # no alpha: scale 1
    base = load_adapter(base_file)
    outputs(base)  # packs the base and fills its constants cache
    patched = patch_adapter(base, [(lora, 1.5)]).adapter

    merged = dict(state)
    w = merged["compression_attention.in_proj_weight"].clone()
    for i, which in ((0, "q"), (2, "v")):
        up, down = stems[f"compression_attention_{which}_proj"]
        w[i * D : (i + 1) * D] += 1.5 * up @ down
    merged["compression_attention.in_proj_weight"] = w
    for name, path in (
        ("pooled_projection_4", "pooled_projection.4"),
        ("narrow_attention_blocks_0_mlp_0", "narrow_attention_blocks.0.mlp.0"),
    ):
        up, down = stems[name]
        merged[f"{path}.weight"] = merged[f"{path}.weight"] + 1.5 * up @ down
    oracle = load_adapter(save_tensors(tmp_path / "merged.safetensors", merged))
    got, want = outputs(patched), outputs(oracle)
    assert torch.allclose(got.crossattn, want.crossattn, atol=1e-4, rtol=0)
    assert torch.allclose(got.pooled, want.pooled, atol=1e-4, rtol=0)
    assert not torch.allclose(got.crossattn, outputs(base).crossattn, atol=1e-3)


def test_two_loras_add(tmp_path, base_file, state):
    a, b = qkv_stems(False, seed=20), qkv_stems(False, seed=30)
    la = write_lora(tmp_path / "a.safetensors", a, alpha=4.0)
    lb = write_lora(tmp_path / "b.safetensors", b, alpha=2.0)
    patched = patch_adapter(load_adapter(base_file), [(la, 0.5), (lb, -1.0)]).adapter
    want = state[f"{ATTN}.in_proj_weight"].clone()
    for stems, m, scale in ((a, 0.5, 1.0), (b, -1.0, 0.5)):
        for i, w in enumerate("qkv"):
            up, down = stems[f"wide_attention_blocks_0_attn_{w}_proj"]
            want[i * D : (i + 1) * D] += m * scale * up @ down
    assert torch.allclose(in_proj(patched), want, atol=1e-6, rtol=0)


def test_half_precision_factors_are_merged_in_fp32(tmp_path, base_file, state):
    stems = qkv_stems(False, seed=40)
    lora = write_lora(tmp_path / "h.safetensors", stems, alpha=4.0, dtype=torch.bfloat16)
    patched = patch_adapter(load_adapter(base_file), [(lora, 1.0)]).adapter
    want = state[f"{ATTN}.in_proj_weight"].clone()
    for i, w in enumerate("qkv"):
        up, down = (t.to(torch.bfloat16).float() for t in stems[f"wide_attention_blocks_0_attn_{w}_proj"])
        want[i * D : (i + 1) * D] += up @ down
    assert in_proj(patched).dtype == torch.float32
    assert torch.allclose(in_proj(patched), want, atol=1e-6, rtol=0)


# -- nothing to do -------------------------------------------------------------------------------------------
def test_zero_multiplier_and_unet_only_loras_leave_the_base(tmp_path, base_file):
    base = load_adapter(base_file)
    lora = write_lora(tmp_path / "x.safetensors", qkv_stems(False))
    unet_only = write_lora(tmp_path / "unet.safetensors", {})
    result = patch_adapter(base, [(lora, 0.0), (unet_only, 1.0)])
    assert result.adapter is base
    assert [(r.modules, r.error, r.applied) for r in result.results] == [(0, None, False), (0, None, False)]


# -- refusals: reported, ignored, never a crash --------------------------------------------------------------
def _one_refused(tmp_path, base_file, bad):
    good = write_lora(tmp_path / "good.safetensors", qkv_stems(False, seed=50))
    base = load_adapter(base_file)
    result = patch_adapter(base, [(bad, 1.0), (good, 1.0)])
    refused, applied = result.results
    assert refused.error and not refused.applied and refused.path == str(bad)
    assert applied.applied  # the other LoRA still applies
    only_good = patch_adapter(base, [(good, 1.0)]).adapter
    assert torch.equal(in_proj(result.adapter), in_proj(only_good))
    return refused


def test_lora_for_another_adapter_is_ignored(tmp_path, base_file):
    bad = write_lora(
        tmp_path / "other.safetensors", {"wide_attention_blocks_5_attn_q_proj": factors(1, D, D)}
    )
    refused = _one_refused(tmp_path, base_file, bad)
    assert "unknown module" in refused.error and "wide_attention_blocks_5_attn_q_proj" in refused.error
    assert "other.safetensors" in refused.describe()


def test_sd1_clip_lora_is_named_as_such(tmp_path, base_file):
    stems = {"text_model_encoder_layers_0_mlp_fc1": factors(1, 3072, 768)}
    refused = _one_refused(tmp_path, base_file, write_lora(tmp_path / "sd15.safetensors", stems))
    assert "CLIP text encoder" in refused.error and "SD 1.x" in refused.error


def test_lora_of_other_shapes_is_ignored(tmp_path, base_file):
    bad = write_lora(tmp_path / "wide.safetensors", {"compression_gate_0": factors(1, 2048, 4096)})
    refused = _one_refused(tmp_path, base_file, bad)
    assert "other shapes" in refused.error and "[2048, 4096]" in refused.error


def test_other_network_types_are_named(tmp_path, base_file):
    extra = {f"{PREFIX}compression_gate_0.hada_w1_a": torch.randn(D, 4)}
    bad = write_lora(tmp_path / "loha.safetensors", {}, extra=extra)
    assert "LoHa" in _one_refused(tmp_path, base_file, bad).error


def test_corrupt_and_missing_files_are_ignored(tmp_path, base_file):
    good = write_lora(tmp_path / "src.safetensors", qkv_stems(False))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    assert _one_refused(tmp_path, base_file, cut).error
    assert _one_refused(tmp_path, base_file, tmp_path / "missing.safetensors").error


def test_perceiver_adapters_refuse_adapter_loras_by_name(tmp_path):
    path = write_tiny_adapter(
        tmp_path / "p.safetensors", llm_dim=40, dim=64, n_wide=1, family="perceiver", num_latents=7, inner=64,
        heads=4, ff_hidden=96, out_dim=64, pooled_dim=24, max_input_len=30,
    )  # fmt: skip
    base = load_adapter(path)
    lora = write_lora(tmp_path / "x.safetensors", qkv_stems(False))
    (result,) = patch_adapter(base, [(lora, 1.0)]).results
    assert "LLMToSDXLAdapter" in result.error and "PerceiverResampler" in result.error


# -- the engine, the Python API and the CLI ------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny random Gemma-3 and a small adapter for it, plus that adapter's tensors."""
    from safetensors.torch import load_file

    from lib_llmcond.tiny import build_tiny_gemma
    from lib_llmcond.tiny.llm import TINY

    root = tmp_path_factory.mktemp("engine")
    llm = build_tiny_gemma(root / "llm")
    shape = {**SMALL, "llm_dim": TINY["gemma3"]["hidden_size"], "max_input_len": 64}
    adapter = write_tiny_adapter(root / "adapter.safetensors", **shape)
    return llm, adapter, load_file(str(adapter))


def engine_opts(models, **kw):
    from lib_llmcond.engine import EncodeOptions

    kw = {"adapter": str(models[1]), **kw}
    return EncodeOptions(llm=str(models[0]), device="cpu", memory="keep", **kw)


def crossattn(engine, text, opts):
    return engine.get_conditioning([text], opts, width=1024, height=1024)["crossattn"]


def test_engine_encodes_with_the_patched_adapter(tmp_path, models):
    from lib_llmcond.engine import Engine

    stems = qkv_stems(False, seed=60)
    stems["narrow_attention_blocks_0_attn_out_proj"] = factors(61, D, D)
    lora = write_lora(tmp_path / "x.safetensors", stems, alpha=4.0)
    merged = dict(models[2])
    merged[f"{ATTN}.in_proj_weight"] = merged[f"{ATTN}.in_proj_weight"].clone()
    for i, w in enumerate("qkv"):
        up, down = stems[f"wide_attention_blocks_0_attn_{w}_proj"]
        merged[f"{ATTN}.in_proj_weight"][i * D : (i + 1) * D] += 0.8 * up @ down
    up, down = stems["narrow_attention_blocks_0_attn_out_proj"]
    key = "narrow_attention_blocks.0.attn.out_proj.weight"
    merged[key] = merged[key] + 0.8 * up @ down
    oracle_file = save_tensors(tmp_path / "merged.safetensors", merged)

    engine = Engine(pack_when_idle=False)
    plain_opts = engine_opts(models)
    lora_opts = engine_opts(models, adapter_loras=[(lora, 0.8)])  # a list from the Python API
    assert lora_opts.adapter_loras == ((str(lora), 0.8),)
    plain = crossattn(engine, "a red fox", plain_opts)
    got = crossattn(engine, "a red fox", lora_opts)
    want = crossattn(Engine(pack_when_idle=False), "a red fox", engine_opts(models, adapter=str(oracle_file)))
    assert torch.allclose(got, want, atol=1e-5, rtol=0) and not torch.allclose(got, plain, atol=1e-3)
    (result,) = engine.adapter_lora_results(lora_opts)
    assert result.applied and result.modules == 4
    # without the LoRA again: the base is untouched (a text not encoded before, against a fresh engine)
    assert torch.equal(
        crossattn(engine, "a blue whale", plain_opts),
        crossattn(Engine(pack_when_idle=False), "a blue whale", plain_opts),
    )


def test_signature_and_cache_key_follow_the_loras(tmp_path, models):
    from lib_llmcond.engine import Engine

    engine = Engine(pack_when_idle=False)
    lora = write_lora(tmp_path / "x.safetensors", qkv_stems(False, seed=70))
    other = write_lora(tmp_path / "y.safetensors", qkv_stems(False, seed=71))
    sig = {
        name: engine.signature(engine_opts(models, adapter_loras=loras))
        for name, loras in {
            "none": (),
            "zero": [(lora, 0.0)],
            "x": [(lora, 1.0)],
            "x-half": [(lora, 0.5)],
            "y": [(other, 1.0)],
        }.items()
    }
    assert sig["zero"] == sig["none"]
    assert len({sig["none"], sig["x"], sig["x-half"], sig["y"]}) == 4
    half = crossattn(engine, "a cat", engine_opts(models, adapter_loras=[(lora, 0.5)]))
    full = crossattn(engine, "a cat", engine_opts(models, adapter_loras=[(lora, 1.0)]))
    zero = crossattn(engine, "a cat", engine_opts(models, adapter_loras=[(lora, 0.0)]))
    assert not torch.equal(half, full)
    assert torch.equal(zero, crossattn(Engine(pack_when_idle=False), "a cat", engine_opts(models)))


def test_engine_ignores_a_lora_that_does_not_fit(tmp_path, models, caplog):
    from lib_llmcond.engine import Engine

    bad = write_lora(tmp_path / "bad.safetensors", {"compression_gate_0": factors(1, 2048, 4096)})
    opts = engine_opts(models, adapter_loras=[(bad, 1.0)])
    engine = Engine(pack_when_idle=False)
    with caplog.at_level("WARNING", logger="llmcond"):
        got = crossattn(engine, "a dog", opts)
    assert torch.equal(got, crossattn(Engine(pack_when_idle=False), "a dog", engine_opts(models)))
    (result,) = engine.adapter_lora_results(opts)
    assert result.error and "bad" in caplog.text and "other shapes" in caplog.text


def test_cli_adapter_lora(tmp_path, models):
    from safetensors.torch import load_file

    from lib_llmcond.cli import lora_arg, main
    from lib_llmcond.engine import Engine

    assert lora_arg("a/b.safetensors:0.8") == ("a/b.safetensors", 0.8)
    assert lora_arg("a/b.safetensors") == ("a/b.safetensors", 1.0)
    assert lora_arg("C:\\loras\\b.safetensors") == ("C:\\loras\\b.safetensors", 1.0)
    assert lora_arg("C:\\loras\\b.safetensors:-0.5") == ("C:\\loras\\b.safetensors", -0.5)
    lora = write_lora(tmp_path / "x.safetensors", qkv_stems(False, seed=80))
    out = tmp_path / "out.safetensors"
    args = ["encode", "--llm", str(models[0]), "--adapter", str(models[1]), "--prompt", "a fox"]
    assert main([*args, "--adapter-lora", f"{lora}:0.8", "--adapter-lora", str(lora), "--out", str(out)]) == 0
    opts = engine_opts(models, emphasis="None", adapter_loras=[(lora, 0.8), (lora, 1.0)])
    assert torch.equal(
        load_file(str(out))["crossattn"], crossattn(Engine(pack_when_idle=False), "a fox", opts)
    )
