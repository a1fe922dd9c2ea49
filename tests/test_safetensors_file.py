"""Our safetensors reader against the safetensors package's own loader, and its per-tensor mappings."""

import gc
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lib_llmcond.cpu_linear import pack_linears
from lib_llmcond.errors import ModelFileError
from lib_llmcond.safetensors_file import MIN_MAPPED, map_tensor, read_header, read_tensor


def _write(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "big.bf16": torch.randn(1024, 1024, generator=g).bfloat16(),  # mapped: 2 MiB
        "big.f32": torch.randn(512, 600, generator=g),
        "odd": torch.randn(3, generator=g).half(),  # read: small, and leaves the next one misaligned
        "after_odd": torch.randn(700, 800, generator=g).bfloat16(),
        "ints": torch.arange(10),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


@pytest.mark.parametrize("how", [read_tensor, map_tensor])
def test_tensors_equal_the_safetensors_package(tmp_path, how):
    path = _write(tmp_path)
    want = load_file(str(path))
    header = read_header(path)
    assert header.meta == {"format": "pt"} and set(header.entries) == set(want)
    with path.open("rb") as f:
        got = {k: how(f, e, path, k) for k, e in header.entries.items()}
    for k, t in want.items():
        assert got[k].dtype == t.dtype and torch.equal(got[k], t), k
        got[k].add_(0)  # our memory or a private mapping: writable, the file untouched
    assert torch.equal(load_file(str(path))["big.bf16"], want["big.bf16"])


def _mapped(path: Path) -> bool:
    return str(path) in Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_a_mapping_closes_with_its_last_tensor(tmp_path):
    path = _write(tmp_path)
    header = read_header(path)
    entry = header.entries["big.bf16"]
    assert entry.nbytes >= MIN_MAPPED
    with path.open("rb") as f:
        tensor = map_tensor(f, entry, path, "big.bf16")
        small = map_tensor(f, header.entries["odd"], path, "odd")
    assert _mapped(path)
    view = tensor[3:5]
    del tensor
    gc.collect()
    assert _mapped(path)  # a view keeps it
    del view, small
    gc.collect()
    assert not _mapped(path)


@pytest.mark.parametrize(
    "cut, needle",
    [(4, "shorter than a safetensors header"), (60, "does not fit"), (-100, "outside the file's data")],
)
def test_truncated_files_are_refused_before_reading(tmp_path, cut, needle):
    path = _write(tmp_path)
    data = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[:cut])
    with pytest.raises(ModelFileError, match=needle) as err:
        read_header(bad)
    assert str(bad) in str(err.value) and err.value.fix


def test_garbage_header_is_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((12).to_bytes(8, "little") + b"not json at all")
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        read_header(bad)


def test_a_model_loaded_from_mappings_equals_one_read(tmp_path, monkeypatch):
    """Every tensor mapped (the real models' case) or every tensor read gives the same model, packed or not."""
    from lib_llmcond import safetensors_file
    from lib_llmcond.encoders.weights import load_transformer
    from lib_llmcond.tiny.llm import write_tiny_llm

    directory = write_tiny_llm(tmp_path, "gemma3", seed=4)
    ids = torch.randint(3, 512, (2, 19), generator=torch.Generator().manual_seed(1))
    outputs = []
    for smallest, pack in ((0, True), (2**40, True), (0, False)):
        monkeypatch.setattr(safetensors_file, "MIN_MAPPED", smallest)
        _, model = load_transformer(directory, dtype=torch.float32)
        if pack:
            pack_linears(model)
        with torch.no_grad():
            outputs += [model(ids, torch.ones_like(ids)), model(ids, torch.ones_like(ids))]  # packed by now
        del model
    for out in outputs[1:]:
        assert torch.allclose(out, outputs[0], atol=1e-5)


def test_a_read_error_becomes_a_model_file_error(tmp_path):
    path = _write(tmp_path)
    entry = read_header(path).entries["big.f32"]

    class Failing:
        def seek(self, _):
            pass

        def readinto(self, _):
            raise OSError(5, "Input/output error")

    with pytest.raises(ModelFileError, match="cannot read tensor 'big.f32'") as err:
        read_tensor(Failing(), entry, path, "big.f32")
    assert str(path) in str(err.value) and err.value.fix
