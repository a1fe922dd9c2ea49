"""Host cooperation per flavour (issue 16 item 2, issue 17 item 8): the real engine in the stand-in host, its
VRAM asked of each host's memory manager stand-in (``webui_standin/memory.py``) only when a load or a move needs
it, with the weights' own bytes; never on a cache hit or while resident. The LLM forward is replaced
(``vram_fakes.fake_forward``): the card is fake, the models and the registry are real."""

from __future__ import annotations

import pytest
import torch
from vram_fakes import FakeCard, fake_forward

from lib_llmcond.webui import memory as host_memory
from webui_standin.memory import VRAMState

GiB, MB = 1 << 30, 1 << 20
CUDA = torch.device("cuda", 0)


@pytest.fixture(params=["a1111", "forge1", "forge2"])
def flavour(request):
    return request.param


def start(flavour, tmp_path, monkeypatch, demo, *, spare: int, **cmd_opts):
    """A stand-in host with the real engine; the card holds the host's UNet (and VAE on A1111) + ``spare``."""
    from lib_llmcond.engine import Engine
    from lib_llmcond.webui import script
    from webui_standin.conftest import _stand

    s = _stand(flavour, tmp_path, monkeypatch)
    (
        tmp_path / "models" / "llm_adapters" / "tiny-adapter.safetensors"
    ).unlink()  # the demo's file of that name
    s.host.shared.cmd_opts.__dict__.update(cmd_opts)
    opts = s.host.shared.opts
    opts.llmcond_llm_folders, opts.llmcond_adapter_folders = str(demo[0].parent), str(demo[1].parent)
    opts.persistent_cond_cache = False  # every generation reaches the engine (its own cache answers repeats)
    seen = fake_forward(monkeypatch)
    card = FakeCard(s.host.unet_bytes + (s.host.vae_bytes if flavour == "a1111" else 0) + spare, monkeypatch)
    s.host.attach_card(card)
    gc_calls: list[int] = []
    s.host.devices.torch_gc = lambda: gc_calls.append(1)
    engine = Engine(host=host_memory.for_host(flavour))
    script.runtime.set_engine(engine)
    return s, card, seen, engine, gc_calls


def generate(s, prompt: str):
    return s.txt2img(s.args(llm="tiny-gemma3", adapter="tiny-adapter.safetensors"), prompt=prompt)


def host_requests(s) -> list:
    """What the host was asked: Forge's free_memory calls; A1111's send_everything_to_cpu calls."""
    return (
        list(s.host.vram.requests)
        if s.host.vram is not None
        else [("lowvram", s.host.lowvram.sends)] * (s.host.lowvram.sends > 0)
    )


@pytest.fixture
def cleanup():
    made = []
    yield made.append
    from lib_llmcond.webui import script

    for s in made:
        s.host.unload_scripts()
        s.host.uninstall()
    script.runtime.set_engine(None)


def test_resident_llm_never_unloads_the_unet(flavour, tmp_path, monkeypatch, demo, cleanup):
    s, card, seen, engine, gc_calls = start(flavour, tmp_path, monkeypatch, demo, spare=3 * GiB)
    cleanup(s)
    for prompt in ["a cat", "a dog", "a cat", "a dog", "a bird"]:
        generate(s, prompt)
    encoded = [t for r in seen for t in r["texts"]]
    assert encoded == ["", "a cat", "a dog", "a bird"]  # each text once (with the empty negative): cache hits
    assert {e.policy for e in engine._models.entries()} == {"keep"}
    assert host_requests(s) == [] and gc_calls == []
    assert "unet" in card.others and (s.host.vram is None or "unet" not in s.host.vram.unloads)
    uploads = len(card.uploads)
    generate(s, "a fox")
    assert len(card.uploads) == uploads  # resident: nothing moves


def test_a_load_asks_for_exactly_the_weights_and_cache_hits_ask_nothing(
    flavour, tmp_path, monkeypatch, demo, cleanup
):
    s, card, seen, engine, gc_calls = start(flavour, tmp_path, monkeypatch, demo, spare=300 * MB)
    cleanup(s)
    generate(s, "a cat")  # Forge: the UNet is loaded after this encode (sampling); A1111: it always is
    adapter_bytes = seen[0]["adapter"][1]
    assert adapter_bytes > 300 * MB  # the tiny adapter does not fit beside the UNet
    assert {e.policy for e in engine._models.entries()} == {"offload"} and card.ours() == 0
    before = host_requests(s)
    generate(s, "a dog")
    if flavour == "a1111":  # no memory manager: its model stays; only torch_gc
        assert host_requests(s) == [] and gc_calls and "unet" in card.others
    else:
        assert host_requests(s)[len(before) :] == [(adapter_bytes, CUDA)]  # not the folder size, not the LLM
        assert s.host.vram.unloads == ["unet"]
        assert "unet" in card.others  # loaded back for sampling
    assert card.ours() == 0  # offloaded after the call
    n, gcs = len(host_requests(s)), len(gc_calls)
    generate(s, "a dog")  # cache hit: no model touched
    assert len(seen) == 2 and len(host_requests(s)) == n and len(gc_calls) == gcs


def test_a1111_medvram_offloads_and_moves_the_unet_out_only_when_needed(tmp_path, monkeypatch, demo, cleanup):
    s, card, _, engine, _ = start("a1111", tmp_path, monkeypatch, demo, spare=100 * MB, medvram=True)
    cleanup(s)
    generate(s, "a cat")  # the card is empty before sampling: nothing asked
    assert {e.policy for e in engine._models.entries()} == {"offload"} and s.host.lowvram.sends == 0
    assert s.host.lowvram.module_in_gpu == "unet"
    generate(s, "a dog")  # the UNet sits on the card now: it is sent to the CPU once
    assert s.host.lowvram.sends == 1 and card.ours() == 0


LOW_MODES = [(f, s) for f in ("forge1", "forge2") for s in ("LOW_VRAM", "NO_VRAM")] + [
    ("a1111", flag) for flag in ("lowvram", "medvram", "medvram_sdxl")
]


@pytest.mark.parametrize(("flavour", "low"), LOW_MODES)
def test_low_vram_modes_select_offload(flavour, low, tmp_path, monkeypatch, demo, cleanup):
    forge_state = flavour != "a1111"
    flags = {} if forge_state else {low: True}
    s, card, _, engine, _ = start(flavour, tmp_path, monkeypatch, demo, spare=100 * GiB, **flags)
    cleanup(s)
    if forge_state:
        s.host.vram.module.vram_state = VRAMState[low]
    generate(s, "a cat")
    assert {e.policy for e in engine._models.entries()} == {"offload"} and card.ours() == 0


def test_forge_reserve_counts_its_models_off_the_card(tmp_path, monkeypatch, demo, cleanup):
    for flavour, inference in (("forge2", 1 << 30), ("forge1", int(0.8 * GiB) + 400 * MB)):
        s, *_ = start(flavour, tmp_path / flavour, monkeypatch, demo, spare=GiB)
        cleanup(s)
        hm = host_memory.for_host(flavour)
        assert hm.reserve(CUDA) == inference + s.host.unet_bytes + s.host.vae_bytes  # nothing loaded yet
        s.host.sample()
        assert hm.reserve(CUDA) == inference + s.host.vae_bytes  # the UNet is on the card: already counted
        s.host.unload_scripts()
        s.host.uninstall()


@pytest.mark.parametrize("forge", ["forge1", "forge2"])
def test_forge_never_loads_its_clip_for_our_conds(forge, tmp_path, monkeypatch, demo, cleanup):
    s, card, seen, _, _ = start(forge, tmp_path, monkeypatch, demo, spare=3 * GiB)
    cleanup(s)
    generate(s, "a cat")
    assert (
        seen and s.host.vram.loads == ["unet"] and "clip" not in card.others
    )  # our hook replaced CLIP's path
    s.txt2img(s.args(enabled=False), prompt="a cat")  # off: the host's own path loads its CLIP
    assert s.host.vram.loads[1] == "clip"
