"""Pre-packed oneDNN linears: same maths as ``F.linear``, in models and adapters, with clean fallbacks."""

import threading
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib_llmcond import cpu_linear
from lib_llmcond.adapters.loader import load_adapter
from lib_llmcond.cpu_linear import IdlePacker, PackedLinear, pack_linears, packing_available

needs_packing = pytest.mark.skipif(
    not packing_available(torch.float32), reason="no oneDNN packed linear here"
)


@needs_packing
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_matches_f_linear(dtype, bias):
    if not packing_available(dtype):
        pytest.skip(f"oneDNN cannot pack {dtype} here")
    g = torch.Generator().manual_seed(1)
    w = torch.randn(48, 32, generator=g).to(dtype)
    b = torch.randn(48, generator=g).to(dtype) if bias else None
    layer = PackedLinear(w, b)
    assert "to pack" in repr(layer)  # packed at the first CPU forward, not before
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for x in (
        torch.randn(5, 32, generator=g),
        torch.randn(2, 7, 32, generator=g),
        torch.randn(7, 2, 32, generator=g).transpose(0, 1),  # not contiguous
    ):
        x = x.to(dtype)
        want = F.linear(x, w, b)
        got = layer(x)
        assert got.shape == want.shape and got.dtype == dtype
        assert torch.allclose(got.float(), want.float(), atol=tol, rtol=tol)
        assert "packed" in repr(layer)
    assert torch.equal(layer.weight, w)  # the dense weight comes back intact


@needs_packing
def test_moving_a_packed_linear_falls_back_to_dense():
    w, b = torch.randn(8, 4), torch.randn(8)
    layer = PackedLinear(w, b)
    x = torch.randn(3, 4, dtype=torch.float64)
    layer(x.float())
    layer = layer.to(torch.float64)  # oneDNN does not pack float64: dense from here on
    assert torch.allclose(layer(x), F.linear(x, w.double(), b.double()))
    assert "dense" in repr(layer)
    layer = layer.to(torch.float32)  # back to a packable dtype: packed again at the next forward
    assert torch.allclose(layer(x.float()), F.linear(x.float(), w, b), atol=1e-6) and "packed" in repr(layer)


@needs_packing
def test_an_unpacked_fp32_layer_runs_through_onednn_with_its_dense_weight(monkeypatch):
    """Before it is packed (or never, in the one-shot CLI) an fp32 layer still uses oneDNN's linear, on the
    dense weight: same maths as ``F.linear``, the weight left as it is."""
    if not cpu_linear.dense_onednn_available(torch.float32):
        pytest.skip("oneDNN's linear does not take a dense fp32 weight here")
    calls = []
    real = cpu_linear._packed_forward
    monkeypatch.setattr(cpu_linear, "_packed_forward", lambda x, w, b: calls.append(w) or real(x, w, b))
    g = torch.Generator().manual_seed(2)
    w, b = torch.randn(48, 32, generator=g), torch.randn(48, generator=g)
    layer = PackedLinear(w, b, at_first_forward=False)
    for x in (torch.randn(1, 32, generator=g), torch.randn(2, 9, 32, generator=g)):
        assert torch.allclose(layer(x), F.linear(x, w, b), atol=1e-5, rtol=1e-5)
    assert len(calls) == 2 and all(c.data_ptr() == w.data_ptr() for c in calls) and "to pack" in repr(layer)
    assert not cpu_linear.dense_onednn_available(torch.bfloat16)  # bf16 F.linear is oneDNN already


@needs_packing
def test_pack_linears_keeps_the_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Sequential(nn.Linear(32, 8, bias=False)))
    x = torch.randn(4, 16)
    with torch.no_grad():
        want = model(x)
        assert pack_linears(model) == 2
        got = model(x)
    assert isinstance(model[0], PackedLinear) and isinstance(model[2][0], PackedLinear)
    assert torch.allclose(got, want, atol=1e-6)


def test_packing_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("LLMCOND_PACK", "0")
    cpu_linear.packing_available.cache_clear()
    try:
        model = nn.Sequential(nn.Linear(4, 4))
        assert pack_linears(model) == 0 and type(model[0]) is nn.Linear
    finally:
        monkeypatch.delenv("LLMCOND_PACK")
        cpu_linear.packing_available.cache_clear()


def test_float16_and_meta_weights_are_never_packed():
    assert not packing_available(torch.float16)
    with torch.device("meta"):
        layer = nn.Linear(4, 4)
    assert cpu_linear.packed(layer) is layer


@needs_packing
def test_packed_adapter_equals_the_plain_one(demo):
    """Every path of the adapter (masked rows, a row without real tokens, attention maps) gives the same
    numbers packed as with the file's own tensors."""
    _, adapter_path = demo
    plain = load_adapter(adapter_path, pack=False)
    fast = load_adapter(adapter_path)
    assert any(isinstance(m, PackedLinear) for m in fast.modules())
    assert not any(isinstance(m, PackedLinear) for m in plain.modules())
    g = torch.Generator().manual_seed(3)
    h = torch.randn(3, 11, plain.llm_dim, generator=g)
    mask = torch.ones(3, 11)
    mask[1, 6:] = 0
    mask[2] = 0
    for m in (None, mask):
        a = plain(h, m, return_attention=True)
        b = fast(h, m, return_attention=True)
        for x, y in ((a.crossattn, b.crossattn), (a.pooled, b.pooled), (a.attention, b.attention)):
            assert torch.allclose(x, y, atol=1e-5, rtol=1e-5)


def _model(at_first_forward: bool) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(32, 32) for _ in range(6)])
    pack_linears(model, at_first_forward=at_first_forward)
    return model


@needs_packing
def test_idle_packer_packs_only_when_started():
    model = _model(at_first_forward=False)
    x = torch.randn(3, 32)
    with torch.no_grad():
        want = model(x)
    layers = [m for m in model.modules() if isinstance(m, PackedLinear)]
    assert len(layers) == 6 and not any(m.is_packed for m in layers)  # a forward does not pack
    packer = IdlePacker(model)
    assert len(packer.pending()) == 6
    assert packer.start() and packer.wait(timeout=60)
    assert all(m.is_packed for m in layers) and not packer.start()  # nothing left: no thread
    with torch.no_grad():
        assert torch.allclose(model(x), want, atol=1e-5)


@needs_packing
def test_idle_packer_never_packs_during_a_forward():
    """Forwards on one thread, the packer on another: no layer is packed while a forward is registered, every
    output equals the dense one, and each layer swaps to its packed weight exactly once."""
    model = _model(at_first_forward=False)
    x = torch.randn(4, 32)
    with torch.no_grad():
        want = model(x)
    packer = IdlePacker(model)
    in_forward, violations, packed = [False], [], []
    original = PackedLinear.pack

    def spy(self):
        if in_forward[0]:
            violations.append(self)
        packed.append(self)
        original(self)

    PackedLinear.pack = spy
    try:
        packer.start()
        for _ in range(50):
            with packer.forward():
                in_forward[0] = True
                with torch.no_grad():
                    got = model(x)
                in_forward[0] = False
            assert torch.allclose(got, want, atol=1e-5)
        assert packer.wait(timeout=60)
    finally:
        PackedLinear.pack = original
    assert not violations and len(packed) == 6


@needs_packing
def test_idle_packer_stops_before_a_move():
    model = _model(at_first_forward=False)
    packer = IdlePacker(model)
    with packer.forward():  # hold the packer off, then stop it: nothing gets packed
        packer.start()
        stopper = threading.Thread(target=packer.stop)
        stopper.start()
        deadline = time.monotonic() + 60
        while not packer._stop and time.monotonic() < deadline:  # leave the forward only once stop() asked
            time.sleep(0.001)
    stopper.join(timeout=60)
    assert not stopper.is_alive() and len(packer.pending()) == 6
    model.to(torch.float64)  # safe now; float64 cannot be packed, so the next packer leaves them dense
    assert packer.start() and packer.wait(timeout=60)
    assert not any(m.is_packed for m in model.modules() if isinstance(m, PackedLinear))
