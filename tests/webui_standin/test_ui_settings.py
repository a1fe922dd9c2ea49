"""Settings, the info line and the script's ui() inside the stand-in."""

from __future__ import annotations

import types
from pathlib import Path

import needs
import torch

from lib_llmcond.webui import args as A
from lib_llmcond.webui import info, settings


def test_settings_folders_from_every_source(tmp_path):
    opts = types.SimpleNamespace(
        llmcond_llm_folders="/extra/llms, /more",
        llmcond_adapter_folders="",
        llmcond_cache_size="12",
        llmcond_memory="bogus",
        llmcond_fallback=True,
    )
    cmd = types.SimpleNamespace(llmcond_llm_dir=["/flag/llms"], llmcond_adapter_dir=None)
    s = settings.read(opts, tmp_path, cmd)
    assert [str(p) for p in s.llm_folders] == [
        str(tmp_path / "LLM"),
        str(tmp_path / "llm"),
        "/flag/llms",
        "/extra/llms",
        "/more",
    ]
    assert [str(p) for p in s.adapter_folders] == [str(tmp_path / "llm_adapters")]
    assert (s.cache_size, s.memory, s.fallback, s.fixed_size) == (12, "auto", True, False)
    assert settings.read(None, tmp_path).fallback is False  # falling back to CLIP is off by default


def test_preload_flags():
    import argparse
    import runpy

    parser = argparse.ArgumentParser()
    runpy.run_path(str(Path(__file__).resolve().parents[2] / "preload.py"))["preload"](parser)
    ns = parser.parse_args(
        ["--llmcond-llm-dir", "/a", "--llmcond-llm-dir", "/b", "--llmcond-adapter-dir", "/c"]
    )
    assert ns.llmcond_llm_dir == ["/a", "/b"] and ns.llmcond_adapter_dir == ["/c"]


def _adapter(path: Path, llm_dim: int) -> Path:
    from lib_llmcond.tiny import adapter as tiny

    config = tiny.llm_to_sdxl_config(llm_dim, n_wide=1, n_narrow=1, mlp_hidden=16, dim=2048)
    tiny.save_tensors(path, tiny.to_layout(tiny.llm_to_sdxl_state_dict(config, 0), "ref"), torch.float32, {})
    return path


def test_info_line_says_whether_the_pair_fits(tmp_path):
    llm = tmp_path / "gemma"
    llm.mkdir()
    (llm / "config.json").write_text(
        '{"model_type": "gemma3_text", "hidden_size": 32, "vocab_size": 8, '
        '"intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1}'
    )
    good = _adapter(tmp_path / "good.safetensors", 32)
    bad = _adapter(tmp_path / "bad.safetensors", 48)
    assert info.describe(llm, good).startswith("OK:")
    text = info.describe(llm, bad)
    assert text.startswith("Does not fit") and "48" in text and "32" in text
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert "junk.safetensors" in info.describe(llm, tmp_path / "junk.safetensors")


def test_settings_page_registration():
    needs.module("gradio", "ui")
    added = {}

    class OptionInfo:
        def __init__(self, default, label, component=None, component_args=None, section=None):
            self.default, self.label, self.component_args, self.section = (
                default,
                label,
                component_args,
                section,
            )

    shared = types.SimpleNamespace(
        OptionInfo=OptionInfo, opts=types.SimpleNamespace(add_option=lambda k, i: added.__setitem__(k, i))
    )
    settings.register(shared)
    assert set(added) == {o.key for o in settings.OPTIONS}
    assert added["llmcond_memory"].component_args == {"choices": ["auto", "offload", "keep", "unload"]}
    assert all(i.section == settings.SECTION for i in added.values())


def test_script_ui_in_a_gradio_page(a1111):
    gr = needs.module("gradio", "ui")
    with gr.Blocks():
        components = a1111.script.ui(False)
    assert len(components) == len(A.NAMES)
    assert components[0].value is False
    fields = a1111.script.infotext_fields
    assert fields[0][0] is components[0] and callable(fields[0][1])
    assert "llmcond LLM" in a1111.script.paste_field_names
    llm_dropdown = components[A.NAMES.index("llm")]
    assert "tiny-gemma" in str(llm_dropdown.choices)
