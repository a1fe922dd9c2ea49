"""Placement tokens (``lib_llmcond/placement.py``): a CUDA graph captured on a module's weights is replayed only
while the module's token is the one it was captured with; every move renews it, copies and new modules never
inherit one."""

from __future__ import annotations

import copy
import gc

import torch

from lib_llmcond import placement
from lib_llmcond.adapters.llm_to_sdxl import LLMToSDXLAdapter, LLMToSDXLConfig
from lib_llmcond.encoders.config import config_from_hf
from lib_llmcond.encoders.transformer import TextTransformer
from lib_llmcond.gpu_encode import placement as graph_placement
from lib_llmcond.residency import CPU, Residency
from lib_llmcond.tiny.llm import TINY


def _llm() -> TextTransformer:
    return TextTransformer(config_from_hf({**TINY["gemma3"], "vocab_size": 64}))


def test_module_moves_renew_the_token():
    model = _llm()
    adapter = LLMToSDXLAdapter(LLMToSDXLConfig(llm_dim=64, n_wide=1, n_narrow=1, dim=32, mlp_hidden=32))
    before = graph_placement(model, adapter)
    assert graph_placement(model, adapter) == before  # asking changes nothing
    for move in (lambda m: m.to(torch.float64), lambda m: m.float(), lambda m: m.to("cpu")):
        was = placement.token(model)
        move(model)
        assert placement.token(model) != was
    adapter.double()
    assert graph_placement(model, adapter)[1] != before[1]


def test_copies_and_new_modules_never_inherit_a_token():
    model = _llm()
    t = placement.token(model)
    twin = copy.deepcopy(model)  # e.g. an adapter LoRA's patched copy
    assert placement.token(twin) != t
    seen, address = {t, placement.token(twin)}, id(model)
    del model, twin
    gc.collect()
    for _ in range(20):  # a new module may reuse a freed one's id(), never its token
        m = _llm()
        assert placement.token(m) not in seen
        seen.add(placement.token(m))
        if id(m) == address:
            break


def test_a_residency_move_renews_the_token(monkeypatch):
    from vram_fakes import FakeCard

    card = FakeCard(1 << 30, monkeypatch)
    model = card.track(_llm())
    r = Residency(model, host_copy=True)
    tokens = {placement.token(model)}
    cuda0 = torch.device("cuda", 0)  # the fake card's (tensors land on meta)
    for device in (cuda0, CPU, cuda0):
        r.to(device)
        tokens.add(placement.token(model))
    assert len(tokens) == 4
