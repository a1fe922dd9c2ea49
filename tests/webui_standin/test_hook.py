"""Host integration through the stand-in (A1111 1.10.1 and Forge2 flavours): issue 4, Build 1-3 and 7."""

from __future__ import annotations

import threading

import pytest
import torch

from lib_llmcond.errors import LlmcondError, ModelFileError
from lib_llmcond.webui import hook, state
from webui_standin import fakes
from webui_standin.conftest import make_models
from webui_standin.host import Host, fake_clip


def conds_of(p) -> list[torch.Tensor]:
    """Every tensor the sampler would see, in a fixed order."""
    out = []
    for s in p.sampled:
        for c in (s.c, s.hr_c):
            if c is not None:
                for prompt in c.batch:
                    for comp in prompt:
                        out += [x.cond[k] for x in comp.schedules for k in ("crossattn", "vector")]
        for uc in (s.uc, s.hr_uc):
            if uc is not None:
                out += [x.cond[k] for sched in uc for x in sched for k in ("crossattn", "vector")]
    return out


def first_cond(sampled, image=0, part=0, step=0):
    return sampled.c.batch[image][part].schedules[step].cond


def texts_to_engine(stand, negative=False):
    return [c.texts for c in stand.engine.calls if c.is_negative == negative]


GEN = dict(
    prompt="a cat (sitting:1.2) BREAK on a mat", negative_prompt="ugly", width=832, height=1216, steps=20
)


# -- the disabled extension is invisible ----------------------------------------------------------------------
@pytest.mark.parametrize("flavour", ["a1111", "forge2"])
def test_disabled_is_bit_identical_to_the_host(flavour, tmp_path, monkeypatch):
    from webui_standin.conftest import _stand

    plain = Host(flavour, str(make_models(tmp_path / "plain"))).install()
    plain.load_model()
    p_ref, _ = plain.txt2img([], batch_size=2, n_iter=2, enable_hr=True, **GEN)
    ref = conds_of(p_ref)
    plain.uninstall()

    stand = _stand(flavour, tmp_path / "ours", monkeypatch)
    try:
        assert hook._is_ours(vars(stand.model)["get_learned_conditioning"])
        p, processed = stand.txt2img(stand.args(enabled=False), batch_size=2, n_iter=2, enable_hr=True, **GEN)
        got = conds_of(p)
        assert len(got) == len(ref) > 0
        assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(got, ref))
        assert not stand.engine.calls
        assert "llmcond" not in processed.infotexts[0]
    finally:
        stand.host.unload_scripts()
        stand.host.uninstall()


def test_enabled_conds_come_from_the_engine(stand):
    p, _ = stand.txt2img(**GEN)
    call = next(c for c in stand.engine.calls if not c.is_negative)
    assert call.texts == [GEN["prompt"]]  # emphasis and BREAK reach us untouched
    assert (call.width, call.height) == (832, 1216)
    c = first_cond(p.sampled[0])
    assert torch.equal(c["crossattn"], fakes.llm_cond(GEN["prompt"], call.opts)[0])
    assert c["crossattn"].shape == (fakes.TOKENS, 2048) and c["vector"].shape == (2816,)
    uc = p.sampled[0].uc[0][0].cond
    assert torch.equal(uc["crossattn"], fakes.llm_cond("ugly", call.opts)[0])


# -- everything above the hook keeps working -----------------------------------------------------------------
def test_styles_and_extra_networks_are_resolved_upstream(stand):
    stand.txt2img(prompt="a cat <lora:detail:0.8>", negative_prompt="bad", styles=["cinematic"])
    assert texts_to_engine(stand) == [["a cat , cinematic lighting"]]
    assert texts_to_engine(stand, negative=True) == [["bad, blurry"]]


def test_prompt_editing_one_call_with_all_variants(stand):
    p, _ = stand.txt2img(prompt="a [cat:dog:10] on a mat", steps=20)
    assert texts_to_engine(stand) == [["a cat on a mat", "a dog on a mat"]]
    scheds = p.sampled[0].c.batch[0][0].schedules
    assert [s.end_at_step for s in scheds] == [10, 20]
    opts = stand.engine.calls[-1].opts
    assert torch.equal(scheds[1].cond["crossattn"], fakes.llm_cond("a dog on a mat", opts)[0])


def test_alternation(stand):
    stand.txt2img(prompt="a [cat|dog]", steps=4)
    assert texts_to_engine(stand) == [["a cat", "a dog", "a cat", "a dog"]] or texts_to_engine(stand) == [
        ["a cat", "a dog"] * 2
    ]


def test_and_with_weights(stand):
    p, _ = stand.txt2img(prompt="a cat AND a dog :0.5")
    assert sorted(t for call in texts_to_engine(stand) for t in call) == [
        " a dog",
        "a cat",
    ]  # as the host splits
    parts = p.sampled[0].c.batch[0]
    assert [x.weight for x in parts] == [1.0, 0.5]


def test_batches_with_per_image_prompts(stand):
    prompts = ["one", "two", "three", "four"]
    p, processed = stand.txt2img(
        prompt=prompts, negative_prompt=["n1", "n2", "n3", "n4"], batch_size=2, n_iter=2
    )
    opts = stand.engine.calls[-1].opts
    for it, sampled in enumerate(p.sampled):
        for i in range(2):
            want = prompts[it * 2 + i]
            assert torch.equal(first_cond(sampled, image=i)["crossattn"], fakes.llm_cond(want, opts)[0])
    assert len(processed.images) == 4


def test_hires_uses_hires_prompt_and_size(stand):
    p, _ = stand.txt2img(
        prompt="a cat", hr_prompt="a cat, detailed", enable_hr=True, hr_scale=1.5, width=832, height=1216
    )
    sizes = {(tuple(c.texts), c.width, c.height) for c in stand.engine.calls if not c.is_negative}
    assert (("a cat",), 832, 1216) in sizes
    assert (("a cat, detailed",), 1248, 1824) in sizes
    first = first_cond(p.sampled[0])
    assert first["vector"][1280] == 1216 and first["vector"][1280 + 256] == 832
    hr_c = p.sampled[0].hr_c.batch[0][0].schedules[0].cond
    assert hr_c["vector"][1280] == 1824 and hr_c["vector"][1280 + 256] == 1248  # E(h), E(w) of the stand-in


def test_img2img_and_inpaint_only_masked_sizes(stand):
    pairs = [(stand.script, stand.args())]
    stand.host.img2img(pairs, prompt="a cat", width=1024, height=768)
    stand.host.img2img(
        pairs, prompt="a dog", width=1024, height=768, inpaint_full_res=True, inpaint_size=(512, 640)
    )
    sizes = [(c.texts, c.width, c.height) for c in stand.engine.calls if not c.is_negative]
    assert (["a cat"], 1024, 768) in sizes and (["a dog"], 512, 640) in sizes


def test_forge2_cfg1_computes_no_uncond(tmp_path, monkeypatch):
    from webui_standin.conftest import _stand

    s = _stand("forge2", tmp_path, monkeypatch)
    try:
        p, _ = s.txt2img(prompt="a cat", cfg_scale=1)
        assert p.sampled[0].uc is None
        assert texts_to_engine(s) == [["a cat"]] and not texts_to_engine(s, negative=True)
        assert (s.engine.calls[0].crop_top, s.engine.calls[0].crop_left) == (0, 0)
    finally:
        s.host.unload_scripts()
        s.host.uninstall()


def test_a1111_crop_settings_reach_the_vector(a1111):
    a1111.host.shared.opts.sdxl_crop_top, a1111.host.shared.opts.sdxl_crop_left = 16, 32
    a1111.txt2img(prompt="a cat")
    assert (a1111.engine.calls[-1].crop_top, a1111.engine.calls[-1].crop_left) == (16, 32)


class NestedPass:
    """Like ADetailer: after each batch, a nested generation with its own ``p`` (and maybe our args)."""

    def __init__(self, stand, with_llmcond: bool):
        self.stand, self.with_llmcond, self.nested = stand, with_llmcond, []
        self.args_from = self.args_to = 0

    def process(self, p, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def postprocess_batch(self, p, *args, **kw):
        pairs = [(self.stand.script, self.stand.args())] if self.with_llmcond else []
        inner, _ = self.stand.host.img2img(pairs, prompt="a face, detailed", width=512, height=512)
        self.nested.append(inner)


@pytest.mark.parametrize("with_llmcond", [True, False])
def test_nested_passes(stand, with_llmcond):
    nested = NestedPass(stand, with_llmcond)
    p, _ = stand.host.txt2img([(stand.script, stand.args()), (nested, [])], prompt=["a", "b"], n_iter=2)
    opts = stand.engine.calls[0].opts
    for it, want in enumerate(["a", "b"]):  # the outer passes keep the LLM after the nested ones
        assert torch.equal(first_cond(p.sampled[it])["crossattn"], fakes.llm_cond(want, opts)[0])
    inner = first_cond(nested.nested[0].sampled[0])["crossattn"]
    want = fakes.llm_cond("a face, detailed", opts)[0] if with_llmcond else fake_clip("a face, detailed")[0]
    assert torch.equal(inner, want)


def test_interrupt_stops_between_batches_and_next_generation_works(stand):
    class Interrupter:
        args_from = args_to = 0

        def process(self, p, *a):
            pass

        def postprocess(self, p, processed, *a):
            pass

        def postprocess_batch(self, p, *a, **kw):
            stand.host.shared.state.interrupted = True

    p, processed = stand.host.txt2img(
        [(stand.script, stand.args()), (Interrupter(), [])], prompt="a", n_iter=3
    )
    assert len(p.sampled) == 1 and len(processed.images) == 1
    assert state.active() is None
    stand.host.shared.state.interrupted = False
    p2, _ = stand.txt2img(prompt="after", n_iter=1)
    assert torch.equal(
        first_cond(p2.sampled[0])["crossattn"], fakes.llm_cond("after", stand.engine.calls[-1].opts)[0]
    )


@pytest.mark.parametrize("hires", [False, True])
def test_cond_and_uncond_are_encoded_in_one_batch(stand, hires):
    prompts = ["a [cat:dog:5] AND a hat :0.7", "a bird"]
    stand.txt2img(
        prompt=prompts,
        negative_prompt=["bad", "worse"],
        batch_size=2,
        steps=10,
        enable_hr=hires,
        hr_prompt="sharp photo",
        hr_negative_prompt="blurry",
    )
    calls = stand.engine.calls
    negatives = [i for i, c in enumerate(calls) if c.is_negative]
    assert len(negatives) == (3 if hires else 2)  # one negative call per unique negative prompt
    firsts = [negatives[0]] + ([negatives[2]] if hires else [])  # the first negative call of each pass
    want = [["a cat", "a dog", " a hat", "a bird"], ["sharp photo"]]
    for first, expected in zip(firsts, want):
        assert list(calls[first].prefetch) == expected
        later = [t for c in calls[first:] if not c.is_negative for t in c.texts]
        assert set(expected) <= set(later)  # exactly what the positive call then asks for
    assert not any(calls[i].prefetch for i in negatives if i not in firsts)  # taken once


# -- the cache key ----------------------------------------------------------------------------------------------
def test_cache_invalidates_when_an_option_changes(stand):
    stand.txt2img(prompt="a cat")
    n = len(stand.engine.calls)
    stand.txt2img(prompt="a cat")
    assert len(stand.engine.calls) == n  # same request: the host's persistent cache answers
    stand.txt2img(stand.args(emphasis="No norm"), prompt="a cat")
    assert len(stand.engine.calls) == n + 2 and stand.engine.calls[-1].opts.emphasis == "No norm"
    stand.txt2img(stand.args(adapter="other-adapter.safetensors", emphasis="No norm"), prompt="a cat")
    assert len(stand.engine.calls) == n + 4
    p, _ = stand.txt2img(
        stand.args(enabled=False), prompt="a cat"
    )  # off: the host's own conds, not stale ours
    assert torch.equal(first_cond(p.sampled[0])["crossattn"], fake_clip("a cat")[0])
    p, _ = stand.txt2img(prompt="a cat")  # on again
    assert torch.equal(
        first_cond(p.sampled[0])["crossattn"], fakes.llm_cond("a cat", stand.engine.calls[0].opts)[0]
    )


def test_follow_webui_emphasis_setting(stand):
    stand.host.shared.opts.emphasis = "Ignore"
    stand.txt2img(prompt="a (cat:1.3)")
    assert stand.engine.calls[-1].opts.emphasis == "Ignore"


# -- which models and calls are replaced ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["refiner", "sd15"])
def test_refiner_and_sd15_keep_the_host_path(kind, tmp_path, monkeypatch):
    from webui_standin.conftest import _stand

    s = _stand("a1111", tmp_path, monkeypatch, kind=kind)
    try:
        s.txt2img(prompt="a cat")
        assert not s.engine.calls and s.model.calls
    finally:
        s.host.unload_scripts()
        s.host.uninstall()


def test_model_load_call_and_plain_lists_keep_the_host_path(stand):
    state.activate(state.RequestState(object(), "sig", "l", "a", "", ""))
    try:
        out = stand.model.get_learned_conditioning([""])
    finally:
        state.activate(None)
    assert not stand.engine.calls and torch.equal(out["crossattn"][0], fake_clip("")[0])


def test_install_is_idempotent_and_removable(stand):
    from lib_llmcond.webui import script

    wrapper = vars(stand.model)["get_learned_conditioning"]
    script.runtime.install()
    for fn in stand.host.callbacks.model_loaded:
        fn(stand.model)
    assert vars(stand.model)["get_learned_conditioning"] is wrapper
    base = stand.host.processing.StableDiffusionProcessing
    assert hook._is_ours(vars(base)["cached_params"])
    stand.host.unload_scripts()  # "Reload UI"
    assert "get_learned_conditioning" not in vars(stand.model)
    assert not hook._is_ours(vars(base)["cached_params"])
    p, _ = stand.host.txt2img([], prompt="a cat")
    assert torch.equal(first_cond(p.sampled[0])["crossattn"], fake_clip("a cat")[0])


def test_new_model_load_is_hooked(stand):
    model = stand.host.load_model()
    assert hook._is_ours(vars(model)["get_learned_conditioning"])
    stand.txt2img(prompt="x")
    assert stand.engine.calls


# -- precision, errors, fallback -------------------------------------------------------------------------------
def test_llm_runs_outside_the_hosts_autocast_and_manual_cast(a1111):
    a1111.txt2img(prompt="a cat")  # the fake engine's nn.Linear probe raises under the stand-in's manual cast
    assert a1111.engine.calls and not any(c.autocast for c in a1111.engine.calls)
    assert "org_forward" not in vars(torch.nn.Linear)


def test_missing_model_stops_the_generation_with_a_message(stand):
    with pytest.raises(ModelFileError) as e:
        stand.txt2img(stand.args(llm="gone-model"), prompt="a cat")
    assert "gone-model" in str(e.value) and "refresh" in str(e.value)
    assert "no LLM" in str(e.value)
    p, _ = stand.txt2img(stand.args(enabled=False), prompt="a cat")  # the WebUI keeps working
    assert torch.equal(first_cond(p.sampled[0])["crossattn"], fake_clip("a cat")[0])


@pytest.mark.parametrize(
    "name", ["../models/LLM/tiny-gemma", "/etc", "LLM/../../x", "tiny-gemma/../tiny-gemma"]
)
def test_path_escapes_are_refused(stand, name):
    with pytest.raises(ModelFileError):
        stand.txt2img(stand.args(llm=name), prompt="a cat")
    assert not stand.engine.calls


def test_no_model_chosen(stand):
    with pytest.raises(LlmcondError, match="no LLM is chosen"):
        stand.txt2img(stand.args(llm=""), prompt="a cat")


def test_engine_failure_with_fallback_setting(stand):
    stand.engine.fail = LlmcondError("cannot load the adapter", path="x.safetensors", fix="re-download it")
    with pytest.raises(LlmcondError, match="(?i)re-download"):
        stand.txt2img(prompt="a cat")
    stand.host.shared.opts.llmcond_fallback = True
    p, processed = stand.txt2img(prompt="a dog")
    assert torch.equal(first_cond(p.sampled[0])["crossattn"], fake_clip("a dog")[0])
    assert "llmcond fallback" in processed.infotexts[0] and "re-download" in processed.infotexts[0].lower()


def test_bad_api_args_stop_with_a_422_message(stand):
    bad = stand.args()
    bad[3] = "Loud"
    with pytest.raises(LlmcondError) as e:
        stand.txt2img(bad, prompt="a cat")
    assert e.value.status_code == 422 and "emphasis" in str(e.value)
    garbage_but_off = [False, 5, None]
    p, _ = stand.txt2img(garbage_but_off, prompt="a cat")
    assert torch.equal(first_cond(p.sampled[0])["crossattn"], fake_clip("a cat")[0])


def test_short_api_args_keep_defaults(stand):
    stand.txt2img([True, "tiny-q4.gguf", "tiny-adapter.safetensors"], prompt="a cat")
    opts = stand.engine.calls[-1].opts
    assert opts.llm.endswith("tiny-q4.gguf") and opts.break_mode == "paragraphs" and not opts.chunk


# -- concurrency ---------------------------------------------------------------------------------------------------
def test_concurrent_requests_get_their_own_conds(stand):
    stand.host.shared.opts.persistent_cond_cache = False
    stand.host.manual_cast = False  # process-wide patches cannot be concurrent, not even the host's own
    jobs = [
        (f"prompt {i}", "tiny-gemma" if i % 2 else "tiny-q4.gguf", ["None", "Original"][i % 2])
        for i in range(8)
    ]
    results, errors = {}, []
    barrier = threading.Barrier(len(jobs))

    def run(i, prompt, llm, emphasis):
        try:
            barrier.wait()
            p, _ = stand.txt2img(stand.args(llm=llm, emphasis=emphasis), prompt=prompt)
            results[i] = p
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, (prompt, llm, emphasis) in enumerate(jobs):
        cond = first_cond(results[i].sampled[0])["crossattn"]
        mine = [c.opts for c in stand.engine.calls if c.texts == [prompt]]
        assert len({o.llm for o in mine}) == 1 and mine[0].llm.endswith(llm) and mine[0].emphasis == emphasis
        assert torch.equal(cond, fakes.llm_cond(prompt, mine[0])[0])


@pytest.mark.cuda
def test_cuda_autocast_is_off_and_conds_land_on_the_model_device(a1111):
    a1111.host.manual_cast = False
    a1111.host.devices.autocast = lambda: torch.autocast("cuda", dtype=torch.float16)
    a1111.model.to("cuda")
    p, _ = a1111.txt2img(prompt="a cat")
    cond = first_cond(p.sampled[0])
    assert cond["crossattn"].device.type == "cuda" and cond["crossattn"].dtype == torch.float32
    assert not any(c.autocast for c in a1111.engine.calls)


@pytest.mark.parametrize(
    ("cls", "attrs", "kind"),
    [
        ("DiffusionEngine", {"is_sdxl": True}, "sdxl"),
        ("StableDiffusionXL", {}, "sdxl"),  # Forge2
        ("SDXL", {}, "sdxl"),  # reForge dev (ldm_patched model_base)
        ("SDXLRefiner", {"is_sdxl": True}, "sdxl_refiner"),
        ("StableDiffusionXLRefiner", {"is_sdxl": True}, "sdxl_refiner"),
        ("LatentDiffusion", {"is_sdxl": False}, "other"),
        ("BaseModel", {}, "other"),
    ],
)
def test_model_kind_table(cls, attrs, kind):
    from lib_llmcond.webui.hosts import model_kind

    assert model_kind(type(cls, (), attrs)()) == kind


# -- issue 17: the host's cond cache and the infotext -------------------------------------------------------------
def llmcond_entries(infotext: str) -> list[str]:
    return [part for part in infotext.splitlines()[-1].split(", ") if part.startswith("llmcond")]


def test_infotext_keys_survive_a_cond_cache_hit(stand):
    """A1111's ``get_conds_with_caching`` answers a new generation whose ``cached_params`` are equal (the seed is
    not part of them) from its class-level cache: our model hook is not called, the infotext stays the same."""
    long = " ".join(["word"] * 600)
    _, first = stand.txt2img(prompt=long, negative_prompt="ugly")
    calls = len(stand.engine.calls)
    _, second = stand.txt2img(prompt=long, negative_prompt="ugly")  # a new seed: nothing in the key changes
    assert len(stand.engine.calls) == calls  # the host's cache answered
    assert 'llmcond tokens: "600/512, cut at token 512' in second.infotexts[0]
    assert llmcond_entries(second.infotexts[0]) == llmcond_entries(first.infotexts[0])
    _, third = stand.txt2img(prompt="short", negative_prompt="ugly")  # a different prompt: its own report
    assert "llmcond tokens: 1/512" in third.infotexts[0]


def test_fallback_note_survives_a_cond_cache_hit(stand):
    stand.host.shared.opts.llmcond_fallback = True
    stand.engine.fail = LlmcondError("cannot load the adapter", path="x.safetensors", fix="re-download it")
    _, first = stand.txt2img(prompt="a dog")
    stand.engine.fail = None  # the host's cache still holds the CLIP conds of "a dog"
    p, second = stand.txt2img(prompt="a dog")
    assert torch.equal(first_cond(p.sampled[0])["crossattn"], fake_clip("a dog")[0])
    assert "llmcond fallback" in second.infotexts[0]
    assert llmcond_entries(second.infotexts[0]) == llmcond_entries(first.infotexts[0])


# -- issue 17: progress text and Interrupt ---------------------------------------------------------------------------
def test_encode_shows_in_the_progress_text_and_slow_steps_on_the_console(stand, capsys):
    st = stand.host.shared.state
    st.textinfo = "Batch 1 out of 1"
    seen = []
    stand.engine.on_row = lambda i: seen.append(st.textinfo)
    stand.txt2img(prompt="a cat", negative_prompt="ugly")
    assert seen and all(t == "llmcond: encoding 1 prompt(s) with the LLM" for t in seen)
    assert st.textinfo == "Batch 1 out of 1"  # the host's own text is back after the encode
    out = capsys.readouterr().out
    assert out.count("llmcond: loading the LLM (fake) and its tokenizer") == 1 and "encoding" not in out


def test_interrupt_stops_the_encode_between_rows_without_falling_back(stand, caplog):
    from lib_llmcond.progress import Interrupted

    st = stand.host.shared.state
    stand.host.shared.opts.llmcond_fallback = True  # an interrupt is not a failure to fall back from

    def press_interrupt(row):
        st.interrupted = True

    stand.engine.on_row = press_interrupt
    with caplog.at_level("WARNING", logger="llmcond"), pytest.raises(Interrupted, match="before row 2 of 2"):
        stand.txt2img(
            prompt="a cat", negative_prompt="[ugly:blurry:5]"
        )  # one call, two rows (prompt editing)
    assert not stand.model.calls[1:]  # no CLIP conds were made (the first call is the model load's)
    assert [r.getMessage() for r in caplog.records if r.name == "llmcond"] == [
        "llmcond: interrupted while encoding the prompt (before row 2 of 2). Start the generation again when you want it"
    ]
    st.interrupted = False
    stand.engine.on_row = lambda row: None
    p, _ = stand.txt2img(prompt="a cat", negative_prompt="[ugly:blurry:5]")
    assert torch.equal(
        first_cond(p.sampled[0])["crossattn"], fakes.llm_cond("a cat", stand.engine.calls[-1].opts)[0]
    )
