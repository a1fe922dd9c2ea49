"""The engine's memory policies end to end on the demo's tiny models and a fake card (issue 16, items 1-2).

The LLM's forward cannot run on the fake card, so ``Pipeline.encode`` is replaced by a probe that records where
the weights are when it runs; loading, keys, placement and the cache are the real ones."""

from __future__ import annotations

import pytest
import torch
from vram_fakes import FakeCard, RecordingHost, fake_forward

from lib_llmcond import registry
from lib_llmcond.engine import EncodeOptions, Engine

MB = 1 << 20


@pytest.fixture
def probe(monkeypatch):
    return fake_forward(monkeypatch)


def opts(demo, **kw) -> EncodeOptions:
    llm, adapter = demo
    return EncodeOptions(
        llm=str(llm), adapter=str(adapter), **{"device": "cuda:0", "llm_dtype": "float32", **kw}
    )


def loaded(engine: Engine) -> list:
    return engine._models.entries()


def test_offload_moves_for_misses_only_and_leaves_nothing_on_the_card(demo, probe, monkeypatch):
    card = FakeCard(1 << 40, monkeypatch)
    host = RecordingHost(card)
    engine = Engine(host=host)
    o = opts(demo, memory="offload")
    engine.encode_texts(["a cat"], o)
    for e in loaded(engine):
        card.track(e.module)
    llm_bytes, adapter_bytes = probe[0]["llm"][2], probe[0]["adapter"][1]
    assert probe[0]["llm"] == ("cuda:0", llm_bytes, llm_bytes)  # all weights on the card while encoding
    assert probe[0]["adapter"] == (adapter_bytes, adapter_bytes)
    assert card.ours() == 0  # both left after the call, the adapter too
    uploads = len(card.uploads)
    engine.get_conditioning(["a cat"], o, width=1024, height=1024)  # a cache hit touches no model
    assert len(probe) == 1 and len(card.uploads) == uploads and host.requests == []
    engine.encode_texts(["a dog"], o)
    assert len(probe) == 2 and len(card.uploads) == 2 * uploads and card.ours() == 0
    assert all(e.residency.has_host_copy for e in loaded(engine))


def test_unload_frees_llm_and_adapter(demo, probe, monkeypatch):
    card = FakeCard(1 << 40, monkeypatch)
    engine = Engine(host=RecordingHost(card))
    engine.encode_texts(["a cat"], opts(demo, memory="unload"))
    assert probe and not loaded(engine)


def test_keep_and_auto_with_room_stay_resident_and_never_ask(demo, probe, monkeypatch):
    card = FakeCard(1 << 40, monkeypatch)
    card.others["unet"] = 5 << 30
    host = RecordingHost(card, reserve=2 << 30)
    engine = Engine(host=host)
    for i in range(3):
        engine.encode_texts([f"prompt {i}"], opts(demo))  # the default policy: auto
    assert EncodeOptions(llm="x", adapter="y").memory == "auto"
    assert {e.policy for e in loaded(engine)} == {"keep"} and len(loaded(engine)) == 2
    assert all(e.on_device for e in loaded(engine)) and host.requests == [] and "unet" in card.others
    assert len(card.uploads) == len([*loaded(engine)[0].module.parameters()]) + len(
        [*loaded(engine)[1].module.parameters()]
    ) + sum(len([*e.module.buffers()]) for e in loaded(engine))  # uploaded once each


def test_auto_on_a_full_card_asks_the_host_for_exactly_the_weights(demo, probe, monkeypatch):
    card = FakeCard(40 * MB, monkeypatch)
    card.others["unet"] = 39 * MB
    host = RecordingHost(card, reserve=0)
    engine = Engine(host=host)
    engine.encode_texts(["a cat"], opts(demo))
    llm_bytes, adapter_bytes = probe[0]["llm"][2], probe[0]["adapter"][1]
    assert {e.policy for e in loaded(engine)} == {"offload"}
    assert host.requests[0] == (adapter_bytes, "cuda:0")  # the adapter is placed first, then the LLM
    assert all(n in (adapter_bytes, llm_bytes) for n, _ in host.requests)
    n = len(host.requests)
    engine.encode_texts(["a cat"], opts(demo))  # cache hit
    assert len(host.requests) == n


def test_device_index_is_part_of_the_keys(demo, probe, monkeypatch):
    card = FakeCard(1 << 40, monkeypatch)
    engine = Engine(host=RecordingHost(card))
    engine.encode_texts(["a cat"], opts(demo, device="cuda:0", memory="keep"))
    engine.encode_texts(["a cat"], opts(demo, device="cuda:1", memory="keep"))
    assert sorted(str(e.device) for e in loaded(engine)) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    assert [p["llm"][0] for p in probe] == ["cuda:0", "cuda:1"]  # cached results are per device too


def test_switching_adapter_evicts_the_old_one(demo, probe, monkeypatch, tmp_path):
    from dataclasses import replace

    from lib_llmcond.tiny import build_tiny_adapter

    card = FakeCard(1 << 40, monkeypatch)
    engine = Engine(host=RecordingHost(card))
    engine.encode_texts(["a cat"], opts(demo, memory="keep"))
    for e in loaded(engine):
        card.track(e.module)
    adapter_bytes = probe[0]["adapter"][1]
    card.total = card.used() + registry.WORKSPACE  # no room for a second adapter beside the first
    other = build_tiny_adapter(tmp_path / "other.safetensors", seed=3)
    engine.encode_texts(["a cat"], replace(opts(demo, memory="keep"), adapter=str(other)))
    for e in loaded(engine):
        card.track(e.module)
    assert [(e.key[0], e.path) for e in loaded(engine)] == [("adapter", str(other)), ("llm", str(demo[0]))]
    assert card.ours() == probe[0]["llm"][2] + adapter_bytes  # the old adapter's device memory is gone


def test_out_of_memory_while_placing_frees_everything(demo, probe, monkeypatch):
    from lib_llmcond import devices
    from lib_llmcond.errors import LlmcondError

    card = FakeCard(1 << 40, monkeypatch)
    engine = Engine(host=RecordingHost(card))

    def oom(source, device):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(devices, "upload", oom)
    with pytest.raises(LlmcondError, match="out of GPU memory"):
        engine.encode_texts(["a cat"], opts(demo, memory="keep"))
    assert not loaded(engine)


# -- on a real card (skipped without CUDA; run in the GPU check) ---------------------------------------------
@pytest.mark.cuda
def test_residency_on_a_real_card():
    from torch import nn

    from lib_llmcond.residency import CPU, Residency

    m = nn.Sequential(nn.Linear(256, 256), nn.LayerNorm(256)).requires_grad_(False)
    x = torch.randn(3, 256)
    want = m(x)
    r = Residency(m, host_copy=True)
    assert all(p.is_pinned() for p in m.parameters())
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    r.to(torch.device("cuda", torch.cuda.current_device()))
    got = m(x.cuda()).cpu()
    assert torch.allclose(got, want, atol=1e-4) and torch.cuda.memory_allocated() - base >= r.nbytes
    r.to(CPU)
    assert torch.cuda.memory_allocated() == base and all(p.is_pinned() for p in m.parameters())


@pytest.mark.cuda
def test_offload_on_a_real_card_matches_the_cpu_and_leaves_the_weights_off(demo):
    gpu = Engine()
    o = opts(demo, device="cuda", memory="offload")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    got = gpu.get_conditioning(["a cat on a mat"], o, width=1024, height=1024)
    want = Engine().get_conditioning(
        ["a cat on a mat"], opts(demo, device="cpu", memory="keep"), width=1024, height=1024
    )
    assert torch.allclose(got["crossattn"].cpu(), want["crossattn"], atol=1e-4)
    entries = loaded(gpu)
    assert len(entries) == 2 and not any(e.on_device for e in entries)
    assert all(p.is_pinned() for e in entries for p in e.module.parameters())
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - base < max(e.nbytes for e in entries)  # the adapter is not there
