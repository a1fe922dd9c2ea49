"""``sdxl_prompt_embeds``: what diffusers' SDXL pipelines take, checked against the Engine's WebUI-shaped
conditioning for the same texts and options (diffusers itself is not needed here; the pipeline test that drives
a real diffusers pipeline is ``test_diffusers_pipeline.py``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lib_llmcond.diffusers_sdxl import sdxl_prompt_embeds
from lib_llmcond.engine import EncodeOptions

KEYS = ("prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds")


def opts(demo, **kw):
    llm, adapter = demo
    return EncodeOptions(llm=str(llm), adapter=str(adapter), device="cpu", llm_dtype="float32", **kw)


def webui(engine, o, texts, **kw):
    return engine.get_conditioning(list(texts), o, width=1024, height=1024, **kw)


def test_batch_matches_the_engine_and_broadcasts_one_negative(engine, demo):
    o = opts(demo)
    prompts = ["a (red:1.3) fox in the snow", "## Character 1\nA girl, smiling."]
    embeds = sdxl_prompt_embeds(o, prompts, "blurry, [lowres]", engine=engine)
    assert set(embeds) == set(KEYS)
    cond = webui(engine, o, prompts)
    uncond = webui(engine, o, ["blurry, [lowres]"] * 2, is_negative=True)
    assert torch.equal(embeds["prompt_embeds"], cond["crossattn"])
    assert torch.equal(embeds["pooled_prompt_embeds"], cond["vector"][:, :1280])
    assert torch.equal(embeds["negative_prompt_embeds"], uncond["crossattn"])
    assert torch.equal(embeds["negative_pooled_prompt_embeds"], uncond["vector"][:, :1280])
    assert embeds["prompt_embeds"].shape == (2, 308, 2048) and embeds["pooled_prompt_embeds"].shape == (
        2,
        1280,
    )
    assert not torch.equal(embeds["prompt_embeds"][0], embeds["prompt_embeds"][1])


def test_emphasis_reaches_the_embeds(engine, demo):
    o = opts(demo)
    plain = sdxl_prompt_embeds(o, "a red fox in the snow", engine=engine)["prompt_embeds"]
    weighted = sdxl_prompt_embeds(o, "a (red:1.5) fox in the snow", engine=engine)["prompt_embeds"]
    raw = sdxl_prompt_embeds(opts(demo, emphasis="None"), "a red fox in the snow", engine=engine)
    assert not torch.equal(plain, weighted)
    assert torch.equal(plain, raw["prompt_embeds"])  # no syntax in the text: Original == untouched text


@pytest.mark.parametrize("long_side", ["prompt", "negative"])
def test_break_blocks_pad_the_shorter_side_with_the_empty_prompt_block(engine, demo, long_side):
    o = opts(demo, break_mode="blocks")
    two_blocks, one_block = "a red fox BREAK snowy forest at night", "blurry"
    prompt, negative = (two_blocks, one_block) if long_side == "prompt" else (one_block, two_blocks)
    embeds = sdxl_prompt_embeds(o, [prompt], [negative], engine=engine)
    assert embeds["prompt_embeds"].shape == embeds["negative_prompt_embeds"].shape == (1, 616, 2048)
    short = embeds["negative_prompt_embeds"] if long_side == "prompt" else embeds["prompt_embeds"]
    empty = engine.encode_texts([""], o)[0].crossattn
    assert torch.equal(short[0, 308:], empty)
    alone = webui(engine, o, [one_block], is_negative=long_side == "prompt")["crossattn"][0]
    assert torch.equal(short[0, :308], alone)


def test_num_images_per_prompt_repeats_each_row_in_diffusers_order(engine, demo):
    o = opts(demo)
    one = sdxl_prompt_embeds(o, ["a fox", "a whale"], ["dark", "bright"], engine=engine)
    two = sdxl_prompt_embeds(
        o, ["a fox", "a whale"], ["dark", "bright"], num_images_per_prompt=2, engine=engine
    )
    for key in KEYS:
        assert two[key].shape[0] == 4
        assert torch.equal(two[key], one[key][[0, 0, 1, 1]])


def test_empty_negative_follows_the_option(engine, demo):
    encoded = sdxl_prompt_embeds(opts(demo), "a fox", engine=engine)
    empty = webui(engine, opts(demo), [""])
    assert torch.equal(encoded["negative_prompt_embeds"], empty["crossattn"])
    assert encoded["negative_pooled_prompt_embeds"].abs().sum() > 0
    zeros = sdxl_prompt_embeds(opts(demo, empty_negative="zeros"), "a fox", engine=engine)
    assert not zeros["negative_prompt_embeds"].any() and not zeros["negative_pooled_prompt_embeds"].any()


def test_device_and_dtype_from_the_pipeline_or_given(engine, demo):
    o = opts(demo)
    fake_pipe = SimpleNamespace(
        _execution_device=torch.device("cpu"), unet=SimpleNamespace(dtype=torch.bfloat16)
    )
    from_pipe = sdxl_prompt_embeds(o, "a fox", pipe=fake_pipe, engine=engine)
    fp32 = sdxl_prompt_embeds(o, "a fox", engine=engine)
    for key in KEYS:
        assert from_pipe[key].dtype == torch.bfloat16 and from_pipe[key].device.type == "cpu"
        assert fp32[key].dtype == torch.float32
        assert torch.equal(from_pipe[key], fp32[key].to(torch.bfloat16))
    given = sdxl_prompt_embeds(o, "a fox", pipe=fake_pipe, dtype=torch.float16, engine=engine)
    assert all(given[key].dtype == torch.float16 for key in KEYS)


def test_a_negative_per_prompt_must_match_the_prompt_count(engine, demo):
    with pytest.raises(ValueError, match="negative_prompt has 3 texts for 2 prompts"):
        sdxl_prompt_embeds(opts(demo), ["a", "b"], ["x", "y", "z"], engine=engine)
