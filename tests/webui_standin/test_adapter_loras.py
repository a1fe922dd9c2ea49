"""Adapter LoRAs through the stand-in hosts (A1111 1.10.1 and Forge2): the LoRAs the host activates for a pass
(``<lora:name:te:unet>``, ``te=``) reach the engine as ``adapter_loras``; with the real engine and tiny models,
the conds are exactly those of the patched adapter, and the base comes back bit for bit."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from lib_llmcond.adapters.lora import PREFIX
from lib_llmcond.webui import infotext, loras
from webui_standin import fakes
from webui_standin.host import remove_lora_extension

GEN = dict(prompt="a cat on a mat", negative_prompt="ugly", width=832, height=1216, steps=20)
D = 64  # the small adapter's width


def factors(seed, out_f, in_f, rank=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_f, rank, generator=g) * 0.2, torch.randn(rank, in_f, generator=g) * 0.2


def write_lora(path, seed, alpha=2.0, stems=None):
    """A kohya-style file: a UNet part (the host's), a CLIP part (ignored) and an adapter part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {
        "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.randn(8, 4),
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.randn(4, 8),
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.randn(8, 4),
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(4, 8),
    }
    stems = (
        stems
        if stems is not None
        else {f"wide_attention_blocks_0_attn_{w}_proj": factors(seed + i, D, D) for i, w in enumerate("qkv")}
        | {
            "compression_attention_q_proj": factors(seed + 5, D, D),
            "pooled_projection_0": factors(seed + 6, D, D),
        }
    )
    for name, (up, down) in stems.items():
        sd[f"{PREFIX}{name}.lora_up.weight"] = up.contiguous()
        sd[f"{PREFIX}{name}.lora_down.weight"] = down.contiguous()
        sd[f"{PREFIX}{name}.alpha"] = torch.tensor(alpha)
    save_file(sd, str(path))
    return path


def lora_dir(stand):
    return stand.host.shared.cmd_opts.lora_dir


def refresh(stand):
    stand.host.modules["networks"].list_available_networks()


# -- with the fake engine: what reaches the engine -------------------------------------------------------------
@pytest.fixture
def with_loras(stand, tmp_path):
    from pathlib import Path

    folder = Path(lora_dir(stand))
    files = {n: write_lora(folder / f"{n}.safetensors", seed) for n, seed in (("x", 1), ("y", 20))}
    files["sub"] = write_lora(folder / "styles" / "sub.safetensors", 40)
    refresh(stand)
    return stand, {k: str(v) for k, v in files.items()}


def opts_of_calls(stand):
    return [c.opts.adapter_loras for c in stand.engine.calls]


def test_lora_tag_reaches_the_engine_for_cond_and_uncond(with_loras):
    stand, files = with_loras
    _, processed = stand.txt2img(**{**GEN, "prompt": "a cat <lora:x:0.8> on a mat"})
    assert [c.texts for c in stand.engine.calls] == [["ugly"], ["a cat  on a mat"]]
    assert opts_of_calls(stand) == [((files["x"], 0.8),)] * 2
    assert processed.extra_generation_params[infotext.ADAPTER_LORAS] == "x: 0.8"
    assert 'llmcond adapter loras: "x: 0.8"' in processed.infotexts[0]
    assert [n.name for n in stand.host.modules["networks"].loaded_networks] == ["x"]  # the host's own half


def test_te_multiplier_follows_the_host_syntax(with_loras):
    stand, files = with_loras
    cases = {
        "<lora:x>": 1.0,
        "<lora:x:0.7:0.2>": 0.7,
        "<lora:x:1:unet=0.5:te=0.3>": 0.3,
        "<lora:x:te=-0.4>": -0.4,
        "<lyco:x:0.6>": 0.6,  # an alias on A1111 only: Forge2 skips it, and so do we
        "<lora:sub:0.5>": 0.5,  # a file in a subfolder, found by the host's scan
    }
    for tag, te in cases.items():
        stand.engine.calls.clear()
        stand.txt2img(**{**GEN, "prompt": f"a cat {tag}"})
        name = "sub" if "sub" in tag else "x"
        skipped = "lyco" in tag and stand.host.flavour == "forge2"
        assert opts_of_calls(stand)[-1] == (() if skipped else ((files[name], te),)), tag
        assert [n.name for n in stand.host.modules["networks"].loaded_networks] == ([] if skipped else [name])


def test_te_zero_leaves_the_adapter_alone(with_loras):
    stand, _ = with_loras
    stand.txt2img(**GEN)
    plain_opts = stand.engine.calls[-1].opts
    stand.engine.calls.clear()
    p, processed = stand.txt2img(**{**GEN, "prompt": "a cat on a mat <lora:x:0:1>"})
    (call,) = [c for c in stand.engine.calls if not c.is_negative]
    assert call.opts == plain_opts  # the same options, LoRA-free: the same cache entries and conds
    assert infotext.ADAPTER_LORAS not in processed.extra_generation_params
    c = p.sampled[0].c.batch[0][0].schedules[0].cond["crossattn"]
    assert torch.equal(c, fakes.llm_cond(call.texts[0], plain_opts)[0])


def test_two_loras_and_the_hires_prompt(with_loras):
    stand, files = with_loras
    stand.txt2img(
        **{**GEN, "prompt": "a cat <lora:x:0.8> <lora:y:0.5>"},
        enable_hr=True,
        hr_prompt="a cat <lora:y:1.2>",
    )
    by_size = {}
    for c in stand.engine.calls:
        by_size.setdefault((c.width, c.height), set()).add(c.opts.adapter_loras)
    assert by_size[(832, 1216)] == {((files["x"], 0.8), (files["y"], 0.5))}
    assert by_size[(1664, 2432)] == {((files["y"], 1.2),)}


def test_adding_and_removing_a_lora_changes_the_host_cache_key(with_loras):
    stand, _ = with_loras
    runs = [GEN["prompt"], GEN["prompt"] + " <lora:x:0.8>", GEN["prompt"]]
    conds = []
    for prompt in runs:
        p, _ = stand.txt2img(**{**GEN, "prompt": prompt})
        conds.append(p.sampled[0].c.batch[0][0].schedules[0].cond["crossattn"])
    assert not torch.equal(conds[0], conds[1])
    assert torch.equal(conds[0], conds[2])


def test_unknown_lora_is_noted_and_generation_goes_on(with_loras):
    stand, _ = with_loras
    _, processed = stand.txt2img(**{**GEN, "prompt": "a cat <lora:nope:1>"})
    assert opts_of_calls(stand) == [(), ()]
    assert processed.images and stand.host.missing_networks == ["nope"]
    note = processed.extra_generation_params[infotext.IGNORED_LORAS]
    assert note == f"nope: {loras.NOT_FOUND}"


def test_host_without_lora_support(stand):
    remove_lora_extension(stand.host)
    _, processed = stand.txt2img(**{**GEN, "prompt": "a cat <lora:x:1>"})
    assert [c.texts for c in stand.engine.calls] == [["ugly"], ["a cat"]]
    assert opts_of_calls(stand) == [(), ()]
    assert processed.extra_generation_params[infotext.IGNORED_LORAS] == f"x: {loras.NO_LORA_SUPPORT}"


# -- with the real engine and tiny models: the numbers -----------------------------------------------------------
@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    from lib_llmcond.tiny import build_tiny_gemma
    from lib_llmcond.tiny.adapter import write_tiny_adapter
    from lib_llmcond.tiny.llm import TINY

    root = tmp_path_factory.mktemp("models")
    build_tiny_gemma(root / "LLM" / "tiny-gemma3")
    (root / "llm_adapters").mkdir()
    shape = dict(n_wide=1, n_narrow=1, dim=D, mlp_hidden=96, output_len=12, max_input_len=64)
    write_tiny_adapter(
        root / "llm_adapters" / "small.safetensors", llm_dim=TINY["gemma3"]["hidden_size"], **shape
    )
    write_lora(root / "Lora" / "x.safetensors", 1)
    write_lora(root / "Lora" / "y.safetensors", 20, alpha=4.0)
    write_lora(root / "Lora" / "unet_only.safetensors", 0, stems={})
    wrong = {"compression_gate_0": factors(3, 2048, 4096)}
    write_lora(root / "Lora" / "other_adapter.safetensors", 0, stems=wrong)
    (root / "Lora" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    return root


@pytest.fixture(params=["a1111", "forge2"])
def real(request, models_root, monkeypatch):
    from webui_standin.conftest import real_engine_stand

    with real_engine_stand(request.param, models_root) as s:
        yield s


def real_args(stand):
    return stand.args(llm="tiny-gemma3", adapter="small.safetensors", device="cpu", emphasis="None")


def run(stand, prompt, **kw):
    p, processed = stand.txt2img(script_args=real_args(stand), **{**GEN, "prompt": prompt, **kw})
    cond = p.sampled[0].c.batch[0][0].schedules[0].cond
    uncond = p.sampled[0].uc[0][0].cond
    return cond["crossattn"], uncond["crossattn"], processed


def library(models_root, text, loras_=()):
    """The library alone, on a fresh engine: the adapter patched with ``loras_`` (file name, multiplier)."""
    from lib_llmcond.engine import EncodeOptions, Engine

    opts = EncodeOptions(
        llm=str(models_root / "LLM" / "tiny-gemma3"),
        adapter=str(models_root / "llm_adapters" / "small.safetensors"),
        device="cpu",
        emphasis="None",
        adapter_loras=tuple((str(models_root / "Lora" / f"{n}.safetensors"), m) for n, m in loras_),
    )
    return Engine(pack_when_idle=False).get_conditioning([text], opts, width=832, height=1216)["crossattn"][0]


def merged_oracle(models_root, tmp_path, loras_):
    """The crossattn of an adapter file whose weights are merged by the formula, for the text 'a fox'."""
    from lib_llmcond.engine import EncodeOptions, Engine
    from lib_llmcond.tiny.adapter import save_tensors

    sd = {k: v.clone() for k, v in load_file(str(models_root / "llm_adapters" / "small.safetensors")).items()}
    rows = {"q": 0, "k": 1, "v": 2}
    for name, m in loras_:
        lora = load_file(str(models_root / "Lora" / f"{name}.safetensors"))
        for key in [k for k in lora if k.startswith(PREFIX) and k.endswith(".lora_up.weight")]:
            stem = key[len(PREFIX) : -len(".lora_up.weight")]
            up, down = lora[key], lora[f"{PREFIX}{stem}.lora_down.weight"]
            delta = m * (float(lora[f"{PREFIX}{stem}.alpha"]) / down.shape[0]) * up @ down
            if stem.endswith(("_q_proj", "_k_proj", "_v_proj")):
                module = {"wide_attention_blocks_0_attn": "wide_attention_blocks.0.attn"}.get(
                    stem[:-7], stem[:-7]
                )
                i = rows[stem[-6]]
                sd[f"{module}.in_proj_weight"][i * D : (i + 1) * D] += delta
            else:
                sd[{"pooled_projection_0": "pooled_projection.0"}[stem] + ".weight"] += delta
    path = save_tensors(tmp_path / "merged.safetensors", sd)
    opts = EncodeOptions(
        llm=str(models_root / "LLM" / "tiny-gemma3"), adapter=str(path), device="cpu", emphasis="None"
    )
    return Engine(pack_when_idle=False).get_conditioning(["a fox"], opts, width=832, height=1216)[
        "crossattn"
    ][0]


def test_lora_changes_crossattn_by_exactly_the_patched_adapter(real, models_root, tmp_path):
    got, got_uc, processed = run(real, "a fox <lora:x:0.8>")
    assert torch.equal(got, library(models_root, "a fox", [("x", 0.8)]))
    assert torch.equal(got_uc, library(models_root, "ugly", [("x", 0.8)]))
    assert torch.allclose(got, merged_oracle(models_root, tmp_path, [("x", 0.8)]), atol=1e-5, rtol=0)
    assert not torch.allclose(got, library(models_root, "a fox"), atol=1e-3)
    assert processed.extra_generation_params[infotext.ADAPTER_LORAS] == "x: 0.8"
    # removed again: the unpatched output, bit for bit (a text this engine has not encoded before)
    plain, _, processed = run(real, "a red fox")
    assert torch.equal(plain, library(models_root, "a red fox"))
    assert infotext.ADAPTER_LORAS not in processed.extra_generation_params


def test_two_loras_add(real, models_root, tmp_path):
    got, _, _ = run(real, "a fox <lora:x:0.8> <lora:y:-0.5>")
    assert torch.equal(got, library(models_root, "a fox", [("x", 0.8), ("y", -0.5)]))
    want = merged_oracle(models_root, tmp_path, [("x", 0.8), ("y", -0.5)])
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_te_zero_and_unet_only_loras_leave_the_adapter_untouched(real, models_root):
    base = library(models_root, "a fox")
    assert torch.equal(run(real, "a fox <lora:x:0:1>")[0], base)
    got, _, processed = run(real, "a fox <lora:unet_only:1>")
    assert torch.equal(got, base)
    assert infotext.ADAPTER_LORAS not in processed.extra_generation_params
    assert infotext.IGNORED_LORAS not in processed.extra_generation_params


def test_non_matching_and_corrupt_loras_are_reported_and_skipped(real, models_root, caplog):
    with caplog.at_level("WARNING", logger="llmcond"):
        got, _, processed = run(real, "a fox <lora:other_adapter:1> <lora:broken:1> <lora:x:0.8>")
    assert torch.equal(got, library(models_root, "a fox", [("x", 0.8)]))
    ignored = processed.extra_generation_params[infotext.IGNORED_LORAS]
    assert "other_adapter: its adapter part was trained for another adapter" in ignored
    assert "broken: " in ignored
    assert processed.extra_generation_params[infotext.ADAPTER_LORAS] == "x: 0.8"
    assert "other_adapter" in caplog.text and "broken" in caplog.text
    assert processed.images and not real.host.script_errors


def test_model_gone_while_signing_the_pass_stops_with_its_message(with_loras, monkeypatch):
    from lib_llmcond.errors import ModelFileError

    stand, _ = with_loras
    gone = ModelFileError("no such file", path="tiny-gemma", fix="check the path")

    def signature(opts):
        if opts.adapter_loras:
            raise gone
        return "sig"

    monkeypatch.setattr(stand.engine, "signature", signature)
    with pytest.raises(ModelFileError, match="no such file"):
        stand.txt2img(**{**GEN, "prompt": "a cat <lora:x:1>"})
    assert not stand.engine.calls
