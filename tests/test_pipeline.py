"""The pipeline on the tiny model: emphasis, BREAK, chunking, cut reports, empty prompts."""

import pytest
import torch

from lib_llmcond.engine import EncodeOptions, Engine


def opts(demo, **kw):
    llm, adapter = demo
    return EncodeOptions(llm=str(llm), adapter=str(adapter), device="cpu", llm_dtype="float32", **kw)


def cond(engine, o, *texts, **kw):
    return engine.get_conditioning(list(texts), o, width=1024, height=1024, **kw)


def test_unit_weights_and_ignore_are_bit_identical_to_emphasis_off(engine, demo):
    off = cond(engine, opts(demo, emphasis="None"), "a red fox, (smile), snow")
    ignore = cond(engine, opts(demo, emphasis="Ignore"), "a red fox, ((smile)), [[snow]]")
    unit = cond(engine, opts(demo, emphasis="Original"), "a red fox, (smile:1.0), snow")
    plain = cond(engine, opts(demo, emphasis="None"), "a red fox, smile, snow")
    assert torch.equal(ignore["crossattn"], plain["crossattn"]) and torch.equal(
        unit["crossattn"], plain["crossattn"]
    )
    assert not torch.equal(off["crossattn"], plain["crossattn"])  # "None" gives the brackets to the LLM


@pytest.mark.parametrize("mode", ["Original", "No norm"])
def test_weight_moves_crossattn_monotonically_and_leaves_pooled(engine, demo, mode):
    o = opts(demo, emphasis=mode)
    base = cond(engine, o, "a red fox sitting in the snow")
    distances = []
    for w in (1.1, 1.3, 1.6, 2.0):
        c = cond(engine, o, f"a (red:{w}) fox sitting in the snow")
        assert torch.equal(c["vector"], base["vector"])  # pooled (and sizes) never scaled
        distances.append((c["crossattn"] - base["crossattn"]).norm().item())
    assert all(b > a for a, b in zip(distances, distances[1:])), distances
    lower = cond(engine, o, "a (red:0.7) fox sitting in the snow")
    assert (lower["crossattn"] - base["crossattn"]).norm().item() > 0


def test_break_modes(engine, demo):
    paragraphs = cond(engine, opts(demo), "a fox BREAK the snow")
    same = cond(engine, opts(demo), "a fox\n\nthe snow")
    assert torch.equal(paragraphs["crossattn"], same["crossattn"])
    blocks = cond(engine, opts(demo, break_mode="blocks"), "a fox BREAK the snow", "one piece")
    assert blocks["crossattn"].shape == (2, 616, 2048)
    alone = cond(engine, opts(demo, break_mode="blocks"), "the snow")
    assert torch.equal(blocks["crossattn"][0, 308:], alone["crossattn"][0])
    empty_block = cond(engine, opts(demo), "")["crossattn"][0]
    assert torch.equal(blocks["crossattn"][1, 308:], empty_block)  # shorter rows padded with the empty block


def long_prompt(n_sections: int = 3) -> str:
    sentence = "the red fox jumps over a lazy dog near the river, and birds sing in tall trees. "
    return "\n".join(f"## Part {i}\n" + sentence * 12 for i in range(n_sections))


def test_chunk_mode_splits_and_first_block_equals_first_piece(engine, demo):
    from lib_llmcond.prompt.chunks import split_for_budget

    o = opts(demo, chunk=True)
    prompt = long_prompt(6)
    reports: list = []
    c = cond(engine, o, prompt, reports=reports)
    k = reports[0].chunks
    assert k >= 3 and c["crossattn"].shape == (1, 308 * k, 2048)
    assert reports[0].tokens > 512 and reports[0].cut is None
    counter = engine.pipeline(o)[0]._counter(o.text_options())
    first = split_for_budget(prompt, [], counter, 512)[0]
    alone = cond(engine, opts(demo), first.text)
    assert torch.equal(c["crossattn"][0, :308], alone["crossattn"][0])
    assert torch.equal(c["vector"], alone["vector"])  # pooled from the first piece


def test_cut_report_names_the_word_at_the_cut(engine, demo):
    prompt = long_prompt(6) + " zebra"
    reports: list = []
    c = cond(engine, opts(demo), prompt, reports=reports)
    r = reports[0]
    assert c["crossattn"].shape == (1, 308, 2048) and r.tokens > 512 and r.cut is not None
    pipe = engine.pipeline(opts(demo))[0]
    row = pipe.text_path(opts(demo).text_options()).tokenize(prompt, pipe.llm.tokenizer)
    s, _ = row.offsets[row.adapter_start + 512]
    assert r.cut.word and r.cut.word in prompt[max(0, s - 20) : s + 20]
    assert "cut at token 512" in r.describe()


@pytest.mark.parametrize(
    "text", ["", "   ", "((()))", "BREAK BREAK", "\x00\x07 ctrl", "😀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd"]
)
def test_odd_prompts_give_finite_conditioning(engine, demo, text):
    c = cond(engine, opts(demo), text)
    assert torch.isfinite(c["crossattn"]).all() and torch.isfinite(c["vector"]).all()
    assert c["crossattn"].shape[1] % 308 == 0 and c["vector"].shape == (1, 2816)


def test_empty_negative_zeros_like_the_hosts(engine, demo):
    z = cond(engine, opts(demo, empty_negative="zeros"), "", is_negative=True)
    assert torch.count_nonzero(z["crossattn"]) == 0 and torch.count_nonzero(z["vector"][:, :1280]) == 0
    assert torch.count_nonzero(z["vector"][:, 1280:]) > 0
    e = cond(engine, opts(demo), "", is_negative=True)
    assert torch.count_nonzero(e["crossattn"]) > 0


def test_gpu_bucketing_plan_on_cpu_equals_unbucketed(engine, demo, monkeypatch):
    """The CUDA plan (all rows in one batch padded to a bucket) run on the CPU gives the same conditioning."""
    import lib_llmcond.pipeline as pipeline
    from lib_llmcond.pipeline import plan_batches

    assert plan_batches([5, 70, 9], torch.device("cuda")) == [([0, 1, 2], 128)]
    assert plan_batches([600], torch.device("cuda")) == [([0], 1024)]
    texts = ["a fox", "a red fox sitting in the snow under the stars, looking at the viewer", ""]
    o = opts(demo)
    plain = Engine().get_conditioning(texts, o, width=1024, height=1024)
    monkeypatch.setattr(pipeline, "plan_batches", lambda n, device: plan_batches(n, torch.device("cuda")))
    bucketed = Engine().get_conditioning(texts, o, width=1024, height=1024)
    assert torch.allclose(plain["crossattn"], bucketed["crossattn"], atol=1e-4)
    assert torch.allclose(plain["vector"], bucketed["vector"], atol=1e-4)


def test_models_loaded_inside_inference_mode_work(demo):
    """Forge runs conditioning under torch.inference_mode(): models may be loaded there (inference tensors)."""
    with torch.inference_mode():
        c = Engine().get_conditioning(["a fox"], opts(demo), width=1024, height=1024)
    assert torch.isfinite(c["crossattn"]).all()
    with torch.inference_mode():
        e = Engine()
        e.get_conditioning(["a fox"], opts(demo), width=1024, height=1024)
    again = e.get_conditioning(["a red fox"], opts(demo), width=1024, height=1024)  # outside, same models
    assert torch.isfinite(again["crossattn"]).all()


def test_count_tokens_agrees_with_the_encode_report(engine, demo):
    import dataclasses

    o = opts(demo)
    for text in ["a (red:1.2) fox", long_prompt(6)]:
        reports: list = []
        cond(engine, o, text, reports=reports)
        counted = engine.count_tokens(text, o)
        assert counted.tokens == reports[0].tokens and (counted.cut is None) == (reports[0].cut is None)
    chunked = engine.count_tokens(long_prompt(6), dataclasses.replace(o, chunk=True))
    reports = []
    cond(engine, dataclasses.replace(o, chunk=True), long_prompt(6), reports=reports)
    assert chunked.chunks == reports[0].chunks > 1 and "chunks" in chunked.describe()


def test_reports_name_break_blocks_as_blocks_and_chunks_as_chunks(engine, demo):
    from lib_llmcond.pipeline import PromptReport

    reports = []
    cond(engine, opts(demo, break_mode="blocks"), "a fox BREAK the snow", reports=reports)
    assert (reports[0].blocks, reports[0].chunks) == (2, 2)
    assert reports[0].describe().endswith(", 2 blocks") and "chunks" not in reports[0].describe()
    reports = []
    cond(engine, opts(demo, break_mode="blocks", chunk=True), long_prompt() + " BREAK a fox", reports=reports)
    r = reports[0]
    assert r.blocks == 2 and r.chunks > 2 and f", 2 blocks, {r.chunks} chunks" in r.describe()
    assert PromptReport(612, 512, chunks=2).describe() == "612/512, 2 chunks"  # chunk mode without BREAK


def test_long_cpu_prompts_give_their_activations_back_and_short_ones_skip_the_trim(engine, demo, monkeypatch):
    """glibc keeps a long prompt's freed activations resident unless trimmed; the trim costs a few ms, so only
    forwards over ``TRIM_AFTER_TOKENS`` tokens pay it (once after the LLM, once after the adapter)."""
    from lib_llmcond import heap

    trims = []
    monkeypatch.setattr(heap, "release_free_memory", lambda: trims.append(1) or True)
    o = opts(demo, emphasis="None")
    cond(engine, o, "a red fox")
    assert trims == []
    long_prompt = " ".join(["a red fox sitting in the snow"] * (heap.TRIM_AFTER_TOKENS // 5))
    cond(engine, o, long_prompt)
    assert len(trims) == 2
