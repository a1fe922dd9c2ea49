"""The accelerator path (bucketed static shapes, CUDA graphs) checked where it can be checked on the CPU: the
static layout gives the eager path's outputs, fused projections change nothing, the precision switch is
scoped; the CUDA-marked tests compare graph replays with eager runs and CUDA with the CPU."""

from __future__ import annotations

import pytest
import torch

from lib_llmcond import gpu_encode
from lib_llmcond.adapters.loader import load_adapter
from lib_llmcond.encoders import transformer
from lib_llmcond.encoders.llm import load_llm
from lib_llmcond.encoders.transformer import fuse_projections
from lib_llmcond.matmul_precision import matmul_precision, resolve_precision
from lib_llmcond.pipeline import Pipeline, TextOptions

PROMPTS = [
    "a red fox",
    "a (red:1.4) fox sitting in the snow, [blurry], looking at the viewer under a pale winter sky",
    "",
    "word " * 300,  # beyond the tiny budget: cut
]


def _pipelines(llm_dir, adapter_path):
    llm = load_llm(llm_dir, dtype=torch.float32)
    adapter = load_adapter(adapter_path)
    eager, static = Pipeline(llm, adapter), Pipeline(llm, adapter)
    static.static = True  # the accelerator's layout, run eagerly on the CPU
    return eager, static


@pytest.mark.parametrize("lean", [False, "sdpa", "gemm"])
@pytest.mark.parametrize("emphasis", ["None", "Original"])
@pytest.mark.parametrize("which", ["gemma", "t5gemma"])
def test_static_layout_gives_the_eager_outputs(demo, t5_demo, monkeypatch, which, emphasis, lean):
    """``lean``: the LLM's layers as an accelerator runs them (``encoders/lean.py``), with that attention form."""
    eager, static = _pipelines(*(demo if which == "gemma" else t5_demo))
    opts = TextOptions(emphasis=emphasis)
    want = eager.encode(PROMPTS, opts)
    if lean:
        monkeypatch.setattr(transformer, "on_accelerator", lambda device: True)
        static.llm.model.use_attention(lean)
    got = static.encode(PROMPTS, opts)  # one bucketed batch of four rows
    for w, g in zip(want, got):
        assert g.crossattn.shape == w.crossattn.shape
        assert (g.crossattn - w.crossattn).abs().max().item() <= 1e-4
        assert (g.pooled - w.pooled).abs().max().item() <= 1e-4
        assert g.report == w.report


def test_plan_counts_buckets_after_the_prefix_and_stops_at_the_budget(demo):
    llm = load_llm(demo[0], dtype=torch.float32)
    path, tok = llm.text_path_for(None), llm.tokenizer
    rows = [path.tokenize(p, tok) for p in ("a red fox", "word " * 300)]
    batch = path.batch(rows, tok)
    prefix = llm.usable_prefix(batch)
    assert prefix == rows[0].adapter_start  # the whole system part is shared
    p = gpu_encode.plan(batch, 64, True, prefix)
    assert p is not None
    assert p.prefix == tuple(rows[0].ids[:prefix])
    assert p.slots == [rows[0].adapter_end - rows[0].adapter_start, 64]
    assert p.input_ids.shape == (2, 64)  # 64 tokens after the prefix: the LLM stops where the adapter does
    assert p.gather.shape == (2, 64) and p.keep.sum(dim=1).tolist() == p.slots
    # the long row's adapter inputs are its first 64 tokens after the template head, in order
    assert p.gather[1].tolist() == [64 + i for i in range(64)]
    assert p.input_ids[1].tolist() == rows[1].ids[prefix : prefix + 64]


def test_bucket_sizes():
    assert [gpu_encode.bucket(n) for n in (1, 64, 65, 300, 512, 513, 1100)] == [
        64,
        64,
        128,
        512,
        512,
        1024,
        1536,
    ]


def test_forward_static_matches_forward_with_left_padding(demo):
    adapter = load_adapter(demo[1])
    hidden = torch.randn(2, 40, adapter.llm_dim)
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[0, 5:40] = True  # left padded row
    mask[1, :17] = True
    want = adapter(hidden, mask, return_attention=True)
    n = 48
    x = torch.zeros(2, n, adapter.llm_dim)
    positions = torch.zeros(2, n, dtype=torch.long)
    keep = torch.zeros(2, n, dtype=torch.bool)
    for i in range(2):
        idx = mask[i].nonzero().flatten()
        x[i, : len(idx)], positions[i, : len(idx)], keep[i, : len(idx)] = hidden[i, idx], idx, True
    got = adapter.forward_static(x, positions, keep, return_attention=True)
    assert (got.crossattn - want.crossattn).abs().max().item() <= 1e-5
    assert (got.pooled - want.pooled).abs().max().item() <= 1e-5
    for i in range(2):
        idx = mask[i].nonzero().flatten()
        assert torch.allclose(got.attention[i, :, : len(idx)], want.attention[i][:, idx], atol=1e-6)
        assert got.attention[i, :, len(idx) :].abs().max() == 0


@pytest.mark.parametrize("family", ["gemma3", "qwen3", "t5gemma"])
def test_fused_projections_change_nothing(tmp_path, family):
    from lib_llmcond.encoders.weights import load_transformer
    from lib_llmcond.tiny.llm import write_tiny_llm

    _, model = load_transformer(write_tiny_llm(tmp_path, family, seed=3), dtype=torch.float32)
    ids = torch.randint(3, 512, (2, 19))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        before = model(ids, mask)
        assert fuse_projections(model) == 2 * len(model.layers)
        after = model(ids, mask)
    assert not hasattr(model.layers[0].self_attn, "q_proj")
    assert (before - after).abs().max().item() <= 1e-5


def test_precision_resolution():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("tf32", cpu) == "fp32"  # the CPU never runs TF32
    assert resolve_precision("fp32", gpu) == "fp32"
    assert resolve_precision("tf32", gpu) == "tf32"
    with pytest.raises(ValueError, match="adapter precision"):
        resolve_precision("fp16", gpu)


@pytest.mark.parametrize("capability,expected", [((7, 5), "fp32"), ((8, 0), "tf32"), ((9, 0), "tf32")])
def test_auto_precision_follows_the_chosen_card(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_precision("auto", torch.device("cuda", 1)) == expected


def test_precision_switch_is_scoped_and_restored(monkeypatch):
    class Backend:  # the legacy flag only, as torch < 2.9 has it
        allow_tf32 = True  # what A1111 sets at start

    from lib_llmcond import matmul_precision as mp

    backend = Backend()
    monkeypatch.setattr(mp, "_matmul_backend", lambda: backend)
    gpu = torch.device("cuda", 0)
    with matmul_precision("fp32", gpu):
        assert backend.allow_tf32 is False
    assert backend.allow_tf32 is True
    with pytest.raises(RuntimeError), matmul_precision("fp32", gpu):
        raise RuntimeError("an encode that fails")
    assert backend.allow_tf32 is True
    with matmul_precision("fp32", torch.device("cpu")):
        assert backend.allow_tf32 is True  # the CPU path leaves the host's switch alone


# -- on a GPU ---------------------------------------------------------------------------------------------
def _cuda_pipeline(llm_dir, adapter_path, precision="fp32"):
    llm = load_llm(llm_dir, dtype=torch.float32, device="cuda")
    return Pipeline(llm, load_adapter(adapter_path, device="cuda"), precision)


@pytest.mark.cuda
@pytest.mark.parametrize("emphasis", ["None", "Original"])
def test_cuda_graph_replay_equals_eager(demo, emphasis):
    pipe = _cuda_pipeline(*demo)
    opts = TextOptions(emphasis=emphasis)
    first = pipe.encode(PROMPTS[:2], opts)  # captures
    again = pipe.encode(PROMPTS[:2], opts)  # replays
    pipe.static = False
    eager = pipe.encode(PROMPTS[:2], opts)
    assert pipe.llm.graphs._graphs, "no graph was captured"
    for a, b, c in zip(first, again, eager):
        assert torch.equal(a.crossattn, b.crossattn)
        assert (a.crossattn - c.crossattn).abs().max().item() <= 1e-4
        assert (a.pooled - c.pooled).abs().max().item() <= 1e-4


@pytest.mark.cuda
@pytest.mark.parametrize("form", ["sdpa", "gemm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_attention_form_on_cuda_matches_the_cpu(demo, form, dtype):
    """Whichever form the load-time timing picks: fp32 within 1e-4 of the CPU, bf16 within its rounding."""
    llm = load_llm(demo[0], dtype=dtype, device="cuda")
    assert llm.model.lean, "the lean layer check failed on this card (see the log)"
    llm.model.use_attention(form)
    gpu = Pipeline(llm, load_adapter(demo[1], device="cuda"), "fp32").encode(PROMPTS, TextOptions())
    cpu = Pipeline(load_llm(demo[0], dtype=torch.float32), load_adapter(demo[1])).encode(
        PROMPTS, TextOptions()
    )
    limit = 1e-4 if dtype == torch.float32 else 0.05
    for g, c in zip(gpu, cpu):
        scale = c.crossattn.abs().max().item() if dtype != torch.float32 else 1.0
        assert (g.crossattn.cpu() - c.crossattn).abs().max().item() <= limit * scale


@pytest.mark.cuda
def test_cuda_fp32_matches_cpu_with_host_tf32_on(demo):
    torch.backends.cuda.matmul.allow_tf32 = True  # as A1111 sets it
    try:
        gpu = _cuda_pipeline(*demo, "fp32").encode(PROMPTS, TextOptions())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    cpu_llm = load_llm(demo[0], dtype=torch.float32)
    cpu = Pipeline(cpu_llm, load_adapter(demo[1])).encode(PROMPTS, TextOptions())
    for g, c in zip(gpu, cpu):
        assert g.crossattn.device.type == "cuda"
        assert (g.crossattn.cpu() - c.crossattn).abs().max().item() <= 1e-4
        assert (g.pooled.cpu() - c.pooled).abs().max().item() <= 1e-4
