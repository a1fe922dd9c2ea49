"""install.py against a fake ``launch`` module with the hosts' pins: installs nothing pinned, quotes every spec."""

from __future__ import annotations

import runpy
import shlex
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
A1111_PINS = (
    "transformers==4.30.2\ntokenizers==0.13.3\nsafetensors==0.4.2\ngradio==3.41.2\nnumpy==1.26.2\n"
    "protobuf==3.20.0\ntorch\n# a comment\npydantic==1.10.15  # inline\n"
)


def fake_launch(tmp_path: Path, installed: set[str], pins: str = A1111_PINS) -> types.ModuleType:
    root = tmp_path / "webui"
    root.mkdir(exist_ok=True)
    (root / "requirements_versions.txt").write_text(pins)
    (root / "launch.py").write_text("# the host's launcher\n")
    launch = types.ModuleType("launch")
    launch.__file__ = str(root / "launch.py")
    launch.pip_calls = []
    launch.is_installed = lambda name: name in installed
    launch.run_pip = lambda args, desc=None: launch.pip_calls.append((args, desc))
    return launch


def run_install(monkeypatch, launch) -> list:
    monkeypatch.setitem(sys.modules, "launch", launch)
    runpy.run_path(str(REPO / "install.py"), run_name="__main__")
    return launch.pip_calls


def shell_words(args: str) -> list[str]:
    """What a POSIX shell makes of ``pip <args>``: a '>' outside quotes would be a redirection."""
    lexer = shlex.shlex(args, posix=True, punctuation_chars=True)
    return list(lexer)


def test_installs_missing_unpinned_packages_quoted(tmp_path, monkeypatch):
    calls = run_install(monkeypatch, fake_launch(tmp_path, installed=set()))
    assert [c[0] for c in calls] == ['install "gguf>=0.10"', 'install "sentencepiece>=0.1.99"']
    for args, _ in calls:
        words = shell_words(args)
        assert words[0] == "install" and len(words) == 2 and ">" not in words  # one quoted word, no redirect


def test_installs_nothing_when_present(tmp_path, monkeypatch):
    assert run_install(monkeypatch, fake_launch(tmp_path, installed={"gguf", "sentencepiece"})) == []


@pytest.mark.parametrize("pinned", ["gguf==0.9.0", "GGUF", "sentencepiece~=0.2"])
def test_never_touches_a_package_the_host_pins(tmp_path, monkeypatch, pinned):
    calls = run_install(monkeypatch, fake_launch(tmp_path, installed=set(), pins=A1111_PINS + pinned + "\n"))
    name = pinned.split("=")[0].split("~")[0].lower()
    assert all(name not in args.lower() for args, _ in calls)


def test_host_pinned_packages_are_never_requested(tmp_path, monkeypatch):
    mod = runpy.run_path(str(REPO / "install.py"))
    launch = fake_launch(tmp_path, installed=set())
    pins = mod["host_pins"](str(tmp_path / "webui"))
    assert {
        "transformers",
        "tokenizers",
        "safetensors",
        "gradio",
        "numpy",
        "protobuf",
        "torch",
        "pydantic",
    } <= pins
    for name, _ in mod["plan"](launch, str(tmp_path / "webui")):
        assert mod["canonical"](name) not in pins | {mod["canonical"](n) for n in mod["NEVER"]}
