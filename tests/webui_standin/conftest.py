"""Fixtures: a stand-in host of each flavour with llmcond's script loaded and a fake engine injected."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from webui_standin import fakes
from webui_standin.host import Host

REPO = Path(__file__).resolve().parents[2]


def make_models(root: Path) -> Path:
    (root / "LLM" / "tiny-gemma").mkdir(parents=True)
    (root / "LLM" / "tiny-gemma" / "config.json").write_text('{"model_type": "gemma3_text"}')
    (root / "LLM" / "tiny-q4.gguf").write_bytes(b"GGUF" + bytes(60))
    (root / "llm_adapters").mkdir()
    (root / "llm_adapters" / "tiny-adapter.safetensors").write_bytes(bytes(64))
    (root / "llm_adapters" / "other-adapter.safetensors").write_bytes(bytes(range(64)))
    return root


def load_script_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "llmcond_script_under_test", REPO / "scripts" / "llmcond.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Stand:
    host: Host
    engine: fakes.FakeEngine
    script: Any
    model: Any

    def args(self, enabled=True, llm="tiny-gemma", adapter="tiny-adapter.safetensors", **kw) -> list:
        from lib_llmcond.webui import args as A

        values = dict(A.DEFAULTS, enabled=enabled, llm=llm, adapter=adapter, **kw)
        return [values[n] for n in A.NAMES]

    def txt2img(self, script_args=None, **kw):
        pairs = (
            []
            if script_args is False
            else [(self.script, script_args if script_args is not None else self.args())]
        )
        return self.host.txt2img(pairs, **kw)


def _stand(flavour: str, tmp_path: Path, monkeypatch, kind: str = "sdxl") -> Stand:
    from lib_llmcond.webui import hosts, request, script, state

    host = Host(flavour, str(make_models(tmp_path / "models"))).install()
    monkeypatch.setattr(request, "options_class", fakes.options_class)
    engine = fakes.FakeEngine()
    script.runtime.host = hosts.detect_host()
    assert script.runtime.host == flavour
    script.runtime.set_engine(engine)
    module = load_script_module()
    model = host.load_model(kind)
    state.activate(None)
    return Stand(host, engine, module.LlmcondScript(), model)


@pytest.fixture(params=["a1111", "forge1", "forge2"])
def stand(request, tmp_path, monkeypatch):
    s = _stand(request.param, tmp_path, monkeypatch)
    yield s
    s.host.unload_scripts()
    s.host.uninstall()
    from lib_llmcond.webui import script

    script.runtime.set_engine(None)


@pytest.fixture
def a1111(tmp_path, monkeypatch):
    s = _stand("a1111", tmp_path, monkeypatch)
    yield s
    s.host.unload_scripts()
    s.host.uninstall()
    from lib_llmcond.webui import script

    script.runtime.set_engine(None)


@contextlib.contextmanager
def real_engine_stand(flavour: str, models_root: Path) -> Iterator[Stand]:
    """A stand-in host with llmcond's script and the real Engine over the models in ``models_root``."""
    from lib_llmcond.engine import Engine
    from lib_llmcond.webui import hosts, script, state

    host = Host(flavour, str(models_root)).install()
    script.runtime.host = hosts.detect_host()
    engine = Engine(pack_when_idle=False)  # outputs compared bit for bit: packed fp32 GEMMs round differently
    script.runtime.set_engine(engine)
    module = load_script_module()
    model = host.load_model("sdxl")
    state.activate(None)
    try:
        yield Stand(host, engine, module.LlmcondScript(), model)
    finally:
        host.unload_scripts()
        host.uninstall()
        script.runtime.set_engine(None)
