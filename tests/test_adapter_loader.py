"""Loading adapter files: each accepted key layout strictly (same weights -> same outputs), each refusal with
a message naming the file, what is wrong and the fix; inspection and LLM pairing."""

from __future__ import annotations

import gc
import pathlib
import re
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from lib_llmcond.adapters.llm_to_sdxl import PRESETS, LLMToSDXLAdapter
from lib_llmcond.adapters.loader import check_pair, ensure_pair, inspect_adapter, load_adapter
from lib_llmcond.errors import IncompatibleModelsError, ModelFileError
from lib_llmcond.tiny.adapter import write_tiny_adapter

SMALL = dict(llm_dim=40, n_wide=1, n_narrow=1, dim=64, mlp_hidden=96, output_len=10, max_input_len=20)
LAYOUTS = ("ref", "split", "converted")


def small(path, **kw):
    return write_tiny_adapter(path, **{**SMALL, **kw})


def outputs(adapter, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 7, adapter.llm_dim, generator=g)
    mask = torch.tensor([[1] * 7, [0, 0] + [1] * 5])
    return adapter(hidden, mask, return_attention=True)


def assert_same(a, b):
    """Same weights, other tensors in memory: equal up to float rounding (alignment changes kernels)."""
    for x, y in ((a.crossattn, b.crossattn), (a.pooled, b.pooled), (a.attention, b.attention)):
        assert (x - y).abs().max().item() <= 2e-6


# ---- accepted layouts -------------------------------------------------------------------------------------
@pytest.mark.parametrize("input_norm", [False, True])
def test_every_layout_loads_strictly_to_the_same_outputs(tmp_path, input_norm):
    ref = load_adapter(small(tmp_path / "ref.safetensors", input_norm=input_norm))
    expected = outputs(ref)
    for layout in LAYOUTS[1:]:
        path = small(tmp_path / f"{layout}.safetensors", layout=layout, input_norm=input_norm)
        keys = load_file(str(path)).keys()
        assert not any("in_proj" in k for k in keys)  # really written in that layout
        adapter = load_adapter(path)
        assert set(inspect_adapter(path).layout.split("+")) == {layout} | (
            {"input_norm"} if input_norm else set()
        )
        assert_same(outputs(adapter), expected)
    assert hasattr(ref, "input_norm") == input_norm


def test_converted_layout_key_names(tmp_path):
    keys = set(load_file(str(small(tmp_path / "c.safetensors", layout="converted"))))
    assert {"compression_q_proj.weight", "compression_out_proj.bias", "pooling_v_proj.weight"} <= keys
    assert {"wide_attention_blocks.0.q_proj.weight", "narrow_attention_blocks.0.out_proj.bias"} <= keys


def test_split_layout_with_out_proj_instead_of_o_proj(tmp_path):
    path = small(tmp_path / "s.safetensors", layout="split")
    sd = {re.sub(r"\.o_proj\.", ".out_proj.", k): v for k, v in load_file(str(path)).items()}
    save_file(sd, str(tmp_path / "s2.safetensors"))
    ref = load_adapter(small(tmp_path / "r.safetensors"))
    assert_same(outputs(load_adapter(tmp_path / "s2.safetensors")), outputs(ref))


def test_input_norm_is_applied(tmp_path):
    path = small(tmp_path / "n.safetensors", input_norm=True)
    sd = load_file(str(path))
    adapter = load_adapter(path)
    hidden = torch.randn(1, 5, SMALL["llm_dim"])
    normed = torch.nn.functional.layer_norm(
        hidden, (SMALL["llm_dim"],), sd["input_norm.weight"], sd["input_norm.bias"]
    )
    without = {k: v for k, v in sd.items() if not k.startswith("input_norm")}
    save_file(without, str(tmp_path / "plain.safetensors"))
    plain = load_adapter(tmp_path / "plain.safetensors")
    assert torch.allclose(adapter(hidden).crossattn, plain(normed).crossattn, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_files_load_as_fp32(tmp_path, dtype):
    adapter = load_adapter(small(tmp_path / "h.safetensors", dtype=dtype))
    assert all(p.dtype == torch.float32 for p in adapter.parameters())
    assert not any(p.requires_grad for p in adapter.parameters()) and not adapter.training
    assert (
        inspect_adapter(tmp_path / "h.safetensors").dtype
        == {torch.bfloat16: "BF16", torch.float16: "F16"}[dtype]
    )


def test_pickles_load_only_through_weights_only(tmp_path):
    ref = load_adapter(small(tmp_path / "a.safetensors"))
    sd = load_file(str(tmp_path / "a.safetensors"))
    torch.save(sd, tmp_path / "flat.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "wrapped.pt")
    for name in ("flat.pth", "wrapped.pt"):
        assert_same(outputs(load_adapter(tmp_path / name)), outputs(ref))


def test_family_comes_from_keys_not_the_file_name(tmp_path):
    path = small(tmp_path / "perceiver_resampler.safetensors")
    assert inspect_adapter(path).family == "llm_to_sdxl"


# ---- refusals ---------------------------------------------------------------------------------------------
def rewrite(tmp_path, change):
    src = small(tmp_path / "src.safetensors")
    sd = load_file(str(src))
    change(sd)
    out = tmp_path / "bad.safetensors"
    save_file(sd, str(out))
    return out


def refused(path, *needles):
    for call in (load_adapter, inspect_adapter):
        with pytest.raises(ModelFileError) as err:
            call(path)
        message = str(err.value)
        assert str(path) in message and err.value.fix
        for needle in needles:
            assert needle in message, message
    return message


def test_missing_key_is_named(tmp_path):
    path = rewrite(tmp_path, lambda sd: sd.pop("compression_gate.0.bias"))
    refused(path, "missing keys compression_gate.0.bias")


def test_unexpected_key_is_named(tmp_path):
    path = rewrite(tmp_path, lambda sd: sd.__setitem__("extra_head.weight", torch.zeros(3, 3)))
    refused(path, "unexpected keys extra_head.weight")


def test_wrong_shape_is_named_with_both_shapes(tmp_path):
    path = rewrite(tmp_path, lambda sd: sd.__setitem__("compression_norm.weight", torch.ones(63)))
    refused(path, "compression_norm.weight [63] (expected [64])")


def test_incomplete_split_triple_is_refused(tmp_path):
    path = small(tmp_path / "s.safetensors", layout="split")
    sd = load_file(str(path))
    del sd["pooling_attention.k_proj.weight"]
    save_file(sd, str(tmp_path / "bad.safetensors"))
    refused(
        tmp_path / "bad.safetensors", "pooling_attention.in_proj_weight", "pooling_attention.q_proj.weight"
    )


def test_missing_anchor_key_is_named(tmp_path):
    path = rewrite(tmp_path, lambda sd: sd.pop("output_position_embeddings"))
    refused(path, "output_position_embeddings")


def test_unknown_tensor_file_is_refused(tmp_path):
    save_file({"model.embed.weight": torch.zeros(4, 4)}, str(tmp_path / "lora.safetensors"))
    refused(tmp_path / "lora.safetensors", "not an adapter", "model.embed.weight [4, 4]")


def test_truncated_safetensors_is_refused(tmp_path):
    path = small(tmp_path / "t.safetensors")
    data = path.read_bytes()
    for cut in (len(data) // 2, 5, 40):
        path.write_bytes(data[:cut])
        refused(path, "safetensors")


def test_garbage_and_unknown_suffix_are_refused(tmp_path):
    (tmp_path / "g.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    refused(tmp_path / "g.safetensors", "not a readable safetensors file")
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    refused(tmp_path / "a.gguf", "unknown adapter file type")
    refused(tmp_path / "missing.safetensors", "no such file")


def test_truncated_pickle_is_refused(tmp_path):
    sd = load_file(str(small(tmp_path / "a.safetensors")))
    torch.save(sd, tmp_path / "a.pth")
    data = (tmp_path / "a.pth").read_bytes()
    (tmp_path / "a.pth").write_bytes(data[: len(data) // 2])
    refused(tmp_path / "a.pth", "cannot read")


class Payload:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickle_with_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    sd = load_file(str(small(tmp_path / "a.safetensors")))
    torch.save({"state_dict": sd, "hook": Payload(marker)}, tmp_path / "evil.pth")
    refused(tmp_path / "evil.pth", "weights_only")
    assert not marker.exists()


def test_pickle_without_a_state_dict_is_refused(tmp_path):
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    refused(tmp_path / "list.pth", "no flat table of tensors")


# ---- inspection, pairing, presets ---------------------------------------------------------------------------
def test_inspect_reports_the_structure(tmp_path):
    info = inspect_adapter(small(tmp_path / "i.safetensors", dtype=torch.bfloat16))
    assert (info.family, info.layout, info.llm_dim, info.output_tokens, info.output_dim) == (
        "llm_to_sdxl", "ref", 40, 10, 64,
    )  # fmt: skip
    assert info.blocks == {"wide": 1, "narrow": 1} and info.max_input_tokens == 20
    adapter = load_adapter(info.path, pack=False)
    assert info.params == sum(p.numel() for p in adapter.parameters())
    assert info.tensors == len(adapter.state_dict()) and info.dtype == "BF16"


def test_check_pair_by_dimension(tmp_path):
    info = inspect_adapter(small(tmp_path / "i.safetensors"))
    reason = check_pair(40, info)
    assert "2048" in reason  # the tiny adapter's 64-d output is no SDXL conditioning
    full = info.__class__(**{**info.__dict__, "output_dim": 2048, "pooled_dim": 1280, "llm_dim": 1152})
    assert check_pair(1152, full) is None
    reason = check_pair(2304, full)
    assert "1152" in reason and "2304" in reason and "Gemma-3" in reason
    with pytest.raises(IncompatibleModelsError):
        ensure_pair(2304, full)


@pytest.mark.slow
def test_real_shape_preset_file_round_trip(tmp_path):
    """The writer at the gemma preset's real shape (bf16 on disk to keep it small), read back."""
    path = write_tiny_adapter(tmp_path / "gemma.safetensors", llm_dim=1152, dtype=torch.bfloat16)
    info = inspect_adapter(path)
    assert (info.tensors, info.params) == (84, 305_253_632)
    assert info.blocks == {"wide": 2, "narrow": 3} and (info.output_dim, info.pooled_dim) == (2048, 1280)
    assert check_pair(1152, info) is None and check_pair(2304, info) is not None
    assert info.layout == "ref" and info.dtype == "BF16"


def test_preset_shapes_are_inferred_from_shapes_alone():
    for name, preset in PRESETS.items():
        with torch.device("meta"):
            sd = LLMToSDXLAdapter(preset).state_dict()
        from lib_llmcond.adapters.llm_to_sdxl import config_from_shapes

        assert config_from_shapes({k: tuple(v.shape) for k, v in sd.items()}) == preset, name


def test_non_ascii_path_and_symlink(tmp_path):
    folder = tmp_path / "模型 adaptér"
    folder.mkdir()
    path = small(folder / "ädapter ✓.safetensors")
    link = tmp_path / "link.safetensors"
    link.symlink_to(path)
    assert_same(outputs(load_adapter(link)), outputs(load_adapter(path)))
    path.write_bytes(path.read_bytes()[:100])
    refused(path, "ädapter ✓.safetensors")


def test_loaded_adapter_owns_its_memory(tmp_path):
    """Overwriting the file in place after loading changes nothing (no view of a mapped file remains)."""
    for name in ("a.safetensors", "a.pth"):
        path = tmp_path / name
        if name.endswith(".pth"):
            torch.save(load_file(str(small(tmp_path / "src.safetensors"))), path)
        else:
            small(path)
        adapter = load_adapter(path)
        before = outputs(adapter)
        path.write_bytes(b"\0" * path.stat().st_size)
        assert_same(outputs(adapter), before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_a_mapped_adapter_views_its_fp32_file_and_computes_the_same(tmp_path):
    """The one-shot loading (``mapped``): same parameters, bit for bit, without a copy; bf16 files are read."""
    big = dict(dim=256, mlp_hidden=1024)  # a 1 MiB fp32 weight: mapped, not read
    path = small(tmp_path / "f32.safetensors", **big)
    copied, mapped = load_adapter(path, pack=False), load_adapter(path, pack=False, mapped=True)
    for (name, a), (_, b) in zip(copied.state_dict().items(), mapped.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert str(path) in pathlib.Path("/proc/self/maps").read_text()
    del mapped
    gc.collect()
    assert str(path) not in pathlib.Path("/proc/self/maps").read_text()
    half = small(tmp_path / "bf16.safetensors", dtype=torch.bfloat16, **big)
    adapter = load_adapter(half, pack=False, mapped=True)
    assert adapter.compression_queries.dtype == torch.float32
    assert str(half) not in pathlib.Path("/proc/self/maps").read_text()


def test_unsupported_dtype_is_refused(tmp_path):
    path = rewrite(
        tmp_path, lambda sd: sd.__setitem__("pooling_token", torch.zeros(1, 1, 64, dtype=torch.bool))
    )
    refused(path, "BOOL")


@pytest.mark.cuda
def test_cuda_fp32_under_fp16_autocast(tmp_path):
    path = small(tmp_path / "a.safetensors")
    cpu = load_adapter(path)
    gpu = load_adapter(path, device="cuda")
    hidden = torch.randn(2, 9, 40)
    mask = torch.tensor([[1] * 9, [0] * 3 + [1] * 6])
    with torch.autocast("cuda", dtype=torch.float16):
        out = gpu(hidden.cuda().half(), mask.cuda(), return_attention=True)
    ref = cpu(hidden, mask, return_attention=True)
    assert out.crossattn.dtype == torch.float32 and out.crossattn.device.type == "cuda"
    assert (out.crossattn.cpu() - ref.crossattn).abs().max() <= 1e-2  # the input was rounded to fp16
    again = gpu(hidden.cuda().half(), mask.cuda())
    assert torch.equal(again.crossattn, gpu(hidden.cuda().half(), mask.cuda()).crossattn)


def test_dotted_in_proj_spelling(tmp_path):
    path = small(tmp_path / "r.safetensors")
    sd = {k.replace("in_proj_weight", "in_proj.weight").replace("in_proj_bias", "in_proj.bias"): v
          for k, v in load_file(str(path)).items()}  # fmt: skip
    save_file(sd, str(tmp_path / "d.safetensors"))
    assert inspect_adapter(tmp_path / "d.safetensors").layout == "dotted"
    assert_same(outputs(load_adapter(tmp_path / "d.safetensors")), outputs(load_adapter(path)))


def test_adapter_without_blocks_loads_and_runs(tmp_path):
    """The smallest SDXL-wide adapter (for demos): 2048 wide, no wide or narrow blocks."""
    path = write_tiny_adapter(
        tmp_path / "z.safetensors", llm_dim=32, n_wide=0, n_narrow=0, dtype=torch.bfloat16
    )
    info = inspect_adapter(path)
    assert info.blocks == {"wide": 0, "narrow": 0} and check_pair(32, info) is None
    out = load_adapter(path)(torch.randn(1, 5, 32))
    assert out.crossattn.shape == (1, 308, 2048) and out.pooled.shape == (1, 1280)
    assert torch.isfinite(out.crossattn).all()
