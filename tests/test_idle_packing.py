"""CPU LLMs run their first prompts on the dense weights and re-lay them for oneDNN between requests."""

import threading

import pytest
import torch

from lib_llmcond.cpu_linear import PackedLinear, packing_available
from lib_llmcond.encoders.llm import load_llm
from lib_llmcond.engine import EncodeOptions, Engine
from lib_llmcond.text.paths import GemmaChatPath

pytestmark = pytest.mark.skipif(not packing_available(torch.float32), reason="no oneDNN packed linear here")


def _layers(llm) -> list[PackedLinear]:
    return [m for m in llm.model.modules() if isinstance(m, PackedLinear)]


def test_first_prompts_run_dense_then_packing_keeps_the_numbers(demo):
    llm_dir, _ = demo
    llm = load_llm(llm_dir, dtype=torch.float32)
    path = GemmaChatPath()
    rows = [path.tokenize(p, llm.tokenizer) for p in ("a cat", "a red fox in the snow, " * 5)]
    batch = path.batch(rows, llm.tokenizer)
    first = llm.hidden_states(batch)
    assert _layers(llm) and not any(m.is_packed for m in _layers(llm))  # nothing packed in front of it
    assert llm.pack_when_idle() and llm.wait_packed(timeout=120)
    assert all(m.is_packed for m in _layers(llm))
    assert torch.allclose(llm.hidden_states(batch), first, atol=1e-4)


def test_moving_the_llm_stops_the_packer(demo):
    llm_dir, _ = demo
    llm = load_llm(llm_dir, dtype=torch.float32)
    with llm.packer.forward():  # a forward in flight: the packer waits, then the move stops it
        llm.pack_when_idle()
    llm.to_device(torch.device("meta"))
    assert not any(m.is_packed for m in _layers(llm)) and not llm.pack_when_idle()  # off the CPU: no packing


@pytest.mark.parametrize("pack", [True, False])
def test_engine_packs_after_a_request_unless_one_shot(demo, pack, monkeypatch):
    """LLM and adapter: nothing is packed on the requesting thread; a one-shot engine never packs."""
    llm_dir, adapter = demo
    engine = Engine(pack_when_idle=pack)
    opts = EncodeOptions(llm=str(llm_dir), adapter=str(adapter), device="cpu", memory="keep")
    on_caller, original = [], PackedLinear.pack
    caller = threading.current_thread()

    def spy(self):
        if threading.current_thread() is caller:
            on_caller.append(self)
        original(self)

    monkeypatch.setattr(PackedLinear, "pack", spy)
    engine.get_conditioning(["a cat"], opts, width=1024, height=1024)
    (llm,) = [e.model for e in engine._models.entries() if e.key[0] == "llm"]
    (ad,) = [e.model for e in engine._models.entries() if e.key[0] == "adapter"]
    ad_layers = [m for m in ad.modules() if isinstance(m, PackedLinear)]
    engine.wait_packed(timeout=120)
    assert ad_layers and not on_caller
    for layers in (_layers(llm), ad_layers):
        assert all(m.is_packed for m in layers) is pack
        assert any(m.is_packed for m in layers) is pack
