"""Model placement without a GPU (issue 16, items 1-3): residency, the byte-sized LRU, the memory policies and
when the host is asked for VRAM. The card is ``vram_fakes.FakeCard``: uploads land on the meta device and the
card's usage is read from the modules' own tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from vram_fakes import FakeCard, RecordingHost, device_bytes

from lib_llmcond import compat, devices, registry
from lib_llmcond.cpu_linear import PackedLinear
from lib_llmcond.errors import LlmcondError
from lib_llmcond.registry import Registry
from lib_llmcond.residency import Residency, module_bytes

MB = 1 << 20
CUDA0, CUDA1 = torch.device("cuda", 0), torch.device("cuda", 1)


class Tied(nn.Module):
    """Tied weights, a parameter-free child and a raw-bytes buffer like a GGUF module's."""

    def __init__(self, mb: int = 1) -> None:
        super().__init__()
        self.embed = nn.Embedding(mb * MB // (64 * 4), 64)
        self.head = nn.Linear(64, mb * MB // (64 * 4), bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("qweight", torch.arange(256, dtype=torch.uint8).repeat(16))
        self.act = nn.GELU()


def model(card: FakeCard, mb: int) -> nn.Module:
    m = nn.Linear(mb * MB // 4 // 256, 256, bias=False)  # mb MiB of fp32
    return card.track(m)


# -- residency -------------------------------------------------------------------------------------------
def test_residency_pins_once_uploads_from_the_pinned_copy_and_moves_back_without_copying(monkeypatch):
    card = FakeCard(100 * MB, monkeypatch)
    m = card.track(Tied())
    original = m.embed.weight.detach().clone()
    r = Residency(m, host_copy=True)
    assert r.nbytes == MB + 4096  # the tied weight once, plus the byte buffer
    assert len(card.pinned) == 2 and m.embed.weight.data_ptr() == card.pinned[0].data_ptr()
    pinned_ptrs = [m.embed.weight.data_ptr(), m.qweight.data_ptr()]
    for _ in range(3):
        r.to(CUDA0)
        assert m.embed.weight.device.type == "meta" and m.qweight.device.type == "meta"
        assert m.head.weight is m.embed.weight  # still tied
        assert device_bytes(m) == r.nbytes
        r.to(torch.device("cpu"))
        assert [m.embed.weight.data_ptr(), m.qweight.data_ptr()] == pinned_ptrs  # the same pinned memory
    assert len(card.pinned) == 2  # pinned once, never again
    assert [n for n, _ in card.uploads] == [MB, 4096] * 3  # every upload reads the pinned copy
    assert torch.equal(m.embed.weight, original)


def test_residency_without_host_copy_cannot_go_back(monkeypatch):
    card = FakeCard(100 * MB, monkeypatch)
    m = model(card, 1)
    r = Residency(m, host_copy=False)
    r.to(CUDA0)
    assert not card.pinned and device_bytes(m) == MB
    with pytest.raises(ValueError, match="no host copy"):
        r.to(torch.device("cpu"))


def test_packed_linears_are_counted_and_refused_for_moving():
    packed = nn.Sequential(PackedLinear(torch.ones(32, 16), torch.ones(32)))
    assert module_bytes(packed) == 32 * 16 * 4 + 32 * 4
    with pytest.raises(ValueError, match="pack=False"):
        Residency(packed, host_copy=True)


# -- policies ----------------------------------------------------------------------------------------------
def acquire(reg: Registry, card: FakeCard, key: str, mb: int, policy: str, device=CUDA0, busy=()):
    loads = []

    def load():
        loads.append(key)
        return model(card, mb)

    m = reg.acquire(("llm", key), key, load, module_of=lambda x: x, device=device, policy=policy, in_use=busy)
    return m, loads


def test_auto_with_room_is_resident_and_never_asks_the_host(monkeypatch):
    card = FakeCard(24 * 1024 * MB, monkeypatch)
    card.others["unet"] = 5 * 1024 * MB
    host = RecordingHost(card, reserve=1024 * MB)
    reg = Registry(host)
    m, loads = acquire(reg, card, "a", 8, "auto")
    reg.release([("llm", "a")], "auto")
    assert loads == ["a"]
    for _ in range(3):
        again, more = acquire(reg, card, "a", 8, "auto")
        reg.release([("llm", "a")], "auto")
        assert again is m and not more
    assert reg.entries()[0].policy == "keep" and device_bytes(m) == 8 * MB
    assert len(card.uploads) == 1 and not card.pinned  # uploaded once, no pinned copy for a resident model
    assert host.requests == [] and "unet" in card.others


def test_auto_without_room_offloads_and_asks_for_exactly_the_missing_bytes(monkeypatch):
    card = FakeCard(16 * MB, monkeypatch)
    card.others["unet"] = 10 * MB
    host = RecordingHost(card, reserve=2 * MB)
    monkeypatch.setattr(registry, "WORKSPACE", 1 * MB)
    reg = Registry(host)
    m, _ = acquire(reg, card, "a", 8, "auto")  # 8 + 2 + 1 > 6 free: offload
    assert reg.entries()[0].policy == "offload"
    assert host.requests == [(8 * MB, "cuda:0")]  # the model's own bytes, not a folder size
    assert device_bytes(m) == 8 * MB and "unet" not in card.others
    reg.release([("llm", "a")], "auto")
    assert device_bytes(m) == 0 and card.free() == 16 * MB  # dropped, nothing copied back
    card.others["unet"] = 4 * MB  # the host reloads a smaller model: 12 MiB free, no request needed
    acquire(reg, card, "a", 8, "auto")
    assert host.requests == [(8 * MB, "cuda:0")] and "unet" in card.others
    assert len(card.pinned) == 1 and len(card.uploads) == 2


def test_low_vram_host_makes_auto_offload(monkeypatch):
    card = FakeCard(1024 * MB, monkeypatch)
    reg = Registry(RecordingHost(card, low=True))
    m, _ = acquire(reg, card, "a", 4, "auto")
    reg.release([("llm", "a")], "auto")
    assert reg.entries()[0].policy == "offload" and device_bytes(m) == 0


def test_keep_offload_unload(monkeypatch):
    card = FakeCard(1024 * MB, monkeypatch)
    reg = Registry(RecordingHost(card))
    keep, _ = acquire(reg, card, "k", 2, "keep")
    off, _ = acquire(reg, card, "o", 2, "offload", busy=[("llm", "k")])
    reg.release([("llm", "k"), ("llm", "o")], "offload")
    assert device_bytes(keep) == 2 * MB and device_bytes(off) == 0
    gone, _ = acquire(reg, card, "u", 2, "unload")
    reg.release([("llm", "u")], "unload")
    assert [e.key[1] for e in reg.entries()] == ["k", "o"]
    del gone
    assert card.ours() == 2 * MB  # the unloaded model's device memory is gone with it


def test_a_changed_policy_places_the_model_anew(monkeypatch):
    card = FakeCard(1024 * MB, monkeypatch)
    reg = Registry(RecordingHost(card))
    acquire(reg, card, "a", 2, "keep")
    reg.release([("llm", "a")], "keep")
    assert card.ours() == 2 * MB
    acquire(reg, card, "a", 2, "offload")  # the user switched the setting: not kept on the card any more
    reg.release([("llm", "a")], "offload")
    assert card.ours() == 0 and reg.entries()[0].policy == "offload"
    acquire(reg, card, "a", 2, "auto")  # auto keeps what was decided at load
    assert reg.entries()[0].policy == "offload"


def test_unload_frees_the_adapter_too(monkeypatch):
    card = FakeCard(1024 * MB, monkeypatch)
    reg = Registry(RecordingHost(card))
    keys = [("adapter", "x"), ("llm", "y")]
    for (kind, name), other in zip(keys, reversed(keys)):
        reg.acquire((kind, name), name, lambda: model(card, 2), module_of=lambda m: m, device=CUDA0,
                    policy="unload", in_use=[other])  # fmt: skip
    assert card.ours() == 4 * MB
    reg.release(keys, "unload")
    assert not reg.entries() and card.ours() == 0


# -- LRU -----------------------------------------------------------------------------------------------------
def test_switching_models_evicts_the_least_recently_used_from_the_card(monkeypatch):
    card = FakeCard(20 * MB, monkeypatch)
    monkeypatch.setattr(registry, "WORKSPACE", 0)
    host = RecordingHost(card)
    reg = Registry(host)
    acquire(reg, card, "a", 8, "auto")  # (no references kept here: an evicted model is freed)
    acquire(reg, card, "b", 8, "auto")
    assert card.ours() == 16 * MB
    acquire(reg, card, "a", 8, "auto")  # a is the most recently used now
    acquire(reg, card, "c", 8, "auto")  # room for two: b (least recent, resident) leaves
    assert [e.key[1] for e in reg.entries()] == ["a", "c"] and card.ours() == 16 * MB
    assert host.requests == []  # our own models made the room, the host's were never asked


def test_offloaded_models_leave_the_card_to_their_host_copy_first(monkeypatch):
    card = FakeCard(10 * MB, monkeypatch)
    monkeypatch.setattr(registry, "WORKSPACE", 0)
    host = RecordingHost(card)
    reg = Registry(host)
    a, _ = acquire(reg, card, "a", 6, "offload")  # on the card until released
    b, _ = acquire(reg, card, "b", 6, "offload")  # a is not in this call: it leaves for its pinned copy
    assert device_bytes(a) == 0 and device_bytes(b) == 6 * MB and len(reg.entries()) == 2
    assert host.requests == []


def test_models_of_the_call_are_never_evicted(monkeypatch):
    card = FakeCard(10 * MB, monkeypatch)
    monkeypatch.setattr(registry, "WORKSPACE", 0)
    reg = Registry(RecordingHost(card))
    a, _ = acquire(reg, card, "a", 6, "keep", busy=[("llm", "b")])
    b, _ = acquire(reg, card, "b", 6, "keep", busy=[("llm", "a")])
    assert device_bytes(a) == device_bytes(b) == 6 * MB  # over the card: the pair stays (the host was asked)


def test_host_ram_budget_evicts_old_cpu_copies(monkeypatch):
    card = FakeCard(100 * MB, monkeypatch, ram=8 << 30)
    reg = Registry(RecordingHost(card))
    acquire(reg, card, "a", 1, "offload")
    card.ram = registry.RAM_MARGIN - 1  # the next load leaves too little RAM
    acquire(reg, card, "b", 1, "offload")
    assert [e.key[1] for e in reg.entries()] == ["b"]


def test_cpu_models_keep_or_unload(monkeypatch):
    card = FakeCard(100 * MB, monkeypatch)
    reg = Registry(RecordingHost(card))
    m, _ = acquire(reg, card, "a", 1, "offload", device=torch.device("cpu"))
    reg.release([("llm", "a")], "offload")
    assert m.weight.device.type == "cpu" and not card.uploads and not card.pinned
    assert reg.entries()[0].policy == "keep"


# -- devices and bf16 ------------------------------------------------------------------------------------
def test_resolve_cuda_index(monkeypatch):
    monkeypatch.setattr(devices, "cuda_count", lambda: 2)
    monkeypatch.setattr(devices, "current_cuda_index", lambda: 1)
    assert devices.resolve("auto") == torch.device("cuda", 1)
    assert devices.resolve("cuda") == torch.device("cuda", 1)
    assert devices.resolve("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(LlmcondError, match=r"cuda:2.*2 CUDA device\(s\) \(cuda:0 to cuda:1\)"):
        devices.resolve("cuda:2")
    with pytest.raises(LlmcondError, match="unknown device"):
        devices.resolve("gpu0")
    monkeypatch.setattr(devices, "cuda_count", lambda: 0)
    assert devices.resolve("auto") == torch.device("cpu")
    with pytest.raises(LlmcondError, match="no CUDA device"):
        devices.resolve("cuda:0")


def test_bf16_only_where_the_chosen_device_runs_it(monkeypatch):
    caps = {0: (7, 5), 1: (8, 6), 2: (8, 0), 3: (6, 1)}
    asked = []

    def capability(device):
        asked.append(device.index)
        return caps[device.index]

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation must not count
    monkeypatch.setattr(devices, "current_cuda_index", lambda: 1)
    got = {i: compat.bf16_supported(torch.device("cuda", i)) for i in caps}
    assert got == {0: False, 1: True, 2: True, 3: False} and asked == [0, 1, 2, 3]
    assert compat.bf16_supported(torch.device("cuda")) is True and asked[-1] == 1  # the current device
    assert compat.bf16_supported(torch.device("cpu")) is True


def test_auto_dtype_follows_the_chosen_device(monkeypatch):
    from lib_llmcond.engine import resolve_dtype

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: {0: (7, 0), 1: (9, 0)}[d.index])
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda", 1)) == torch.bfloat16
