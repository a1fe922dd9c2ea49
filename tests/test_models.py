import os

import pytest

from lib_llmcond.errors import ModelFileError
from lib_llmcond.models import default_folders, find_models, identity, resolve_model


@pytest.fixture()
def tree(tmp_path):
    llm = tmp_path / "models" / "LLM"
    (llm / "gemma-3-1b-it").mkdir(parents=True)
    (llm / "gemma-3-1b-it" / "config.json").write_text("{}")
    (llm / "sub" / "rouwei-gemma.Q8_0.gguf").parent.mkdir()
    (llm / "sub" / "rouwei-gemma.Q8_0.gguf").write_bytes(b"GGUF")
    (llm / "notes.txt").write_text("x")
    ad = tmp_path / "models" / "llm_adapters"
    ad.mkdir()
    (ad / "rouwei_gemma.safetensors").write_bytes(b"x" * 10)
    (ad / "resampler.pth").write_bytes(b"x")
    (ad / "ünïcode adapter.safetensors").write_bytes(b"y")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "stolen.safetensors").write_bytes(b"z")
    os.symlink(outside, ad / "link-out")
    os.symlink(outside / "stolen.safetensors", ad / "file-link.safetensors")
    return tmp_path


def test_discovery_lists_dirs_and_gguf_and_adapters(tree):
    llms = find_models(default_folders(tree / "models", "llm"), "llm")
    assert [(e.name, e.format) for e in llms] == [
        ("gemma-3-1b-it", "hf_dir"),
        ("sub/rouwei-gemma.Q8_0.gguf", "gguf"),
    ]
    adapters = find_models(default_folders(tree / "models", "adapter"), "adapter")
    assert [e.name for e in adapters] == [
        "resampler.pth",
        "rouwei_gemma.safetensors",
        "ünïcode adapter.safetensors",
    ]


def test_symlinks_leaving_the_folder_are_ignored(tree):
    names = [e.name for e in find_models([tree / "models" / "llm_adapters"], "adapter")]
    assert not any("stolen" in n or "link" in n for n in names)


@pytest.mark.parametrize(
    "name", ["../secret/stolen.safetensors", "/etc/passwd", "link-out/stolen.safetensors", ""]
)
def test_resolve_refuses_names_outside(tree, name):
    with pytest.raises(ModelFileError, match="no adapter named"):
        resolve_model(name, [tree / "models" / "llm_adapters"], "adapter")


def test_resolve_finds_listed_name(tree):
    p = resolve_model("ünïcode adapter.safetensors", [tree / "models" / "llm_adapters"], "adapter")
    assert p.read_bytes() == b"y"


def test_identity_changes_when_file_is_replaced(tmp_path):
    f = tmp_path / "a.safetensors"
    f.write_bytes(b"a" * 5_000_000)
    first = identity(f)
    assert identity(f) == first
    f.write_bytes(b"b" * 5_000_000)
    os.utime(f, ns=(first.mtime_ns + 10**9, first.mtime_ns + 10**9))
    second = identity(f)
    assert second.fingerprint != first.fingerprint and second.size == first.size
    assert len(first.short_hash) == 10


def test_identity_of_missing_path(tmp_path):
    with pytest.raises(ModelFileError, match="cannot read"):
        identity(tmp_path / "nope")


def test_default_folders_deduplicates(tmp_path):
    folders = default_folders(tmp_path, "llm", [tmp_path / "LLM", "", tmp_path / "extra"])
    assert folders == [tmp_path / "LLM", tmp_path / "llm", tmp_path / "extra"]
