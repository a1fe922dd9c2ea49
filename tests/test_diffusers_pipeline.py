"""A tiny random diffusers ``StableDiffusionXLPipeline`` (no CLIP encoders, no tokenizers) driven with
``sdxl_prompt_embeds``: the UNet receives exactly our crossattn, and diffusers' own size conditioning
(``add_time_ids`` through the UNet's ``add_time_proj``) next to our pooled is exactly our 2816-d ``vector``.
Runs where diffusers is installed (.venv-gradio4; ``dev/test.sh`` runs this file there)."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from tiny_sdxl import tiny_sdxl_unet  # noqa: E402

from lib_llmcond.diffusers_sdxl import sdxl_prompt_embeds  # noqa: E402
from lib_llmcond.engine import EncodeOptions  # noqa: E402

HEIGHT, WIDTH, CROP = 1216, 832, (16, 32)  # size conditioning as a real SDXL request would send it


@pytest.fixture(scope="module")
def pipe():
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
    )

    unet = tiny_sdxl_unet()
    vae = AutoencoderKL(
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=8,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=None,
        tokenizer=None,
        tokenizer_2=None,
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler(),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def capture_unet_inputs(pipe):
    """Every UNet call's ``encoder_hidden_states`` and ``added_cond_kwargs``, and every input of its
    ``add_embedding`` (= text_embeds ‖ add_time_proj(time_ids), what the UNet embeds)."""
    calls, add_inputs = [], []

    def on_unet(_module, args, kwargs):
        calls.append({k: kwargs[k] for k in ("encoder_hidden_states", "added_cond_kwargs")})

    def on_add_embedding(_module, args):
        add_inputs.append(args[0].detach().clone())

    handles = [
        pipe.unet.register_forward_pre_hook(on_unet, with_kwargs=True),
        pipe.unet.add_embedding.register_forward_pre_hook(on_add_embedding),
    ]
    return calls, add_inputs, handles


@pytest.mark.slow
def test_sdxl_pipeline_gets_our_crossattn_and_our_vector(pipe, engine, demo):
    llm, adapter = demo
    opts = EncodeOptions(
        llm=str(llm), adapter=str(adapter), device="cpu", llm_dtype="float32", break_mode="blocks"
    )
    prompts = ["a (red:1.3) fox in the snow BREAK snowy forest at night", "## Character 1\nA girl, smiling."]
    negative = "blurry, [lowres]"
    embeds = sdxl_prompt_embeds(opts, prompts, negative, pipe=pipe, engine=engine)
    assert embeds["prompt_embeds"].shape == embeds["negative_prompt_embeds"].shape == (2, 616, 2048)
    assert embeds["prompt_embeds"].dtype == pipe.unet.dtype

    calls, add_inputs, handles = capture_unet_inputs(pipe)
    try:
        latents = pipe(
            **embeds,
            height=8,
            width=8,
            original_size=(HEIGHT, WIDTH),
            crops_coords_top_left=CROP,
            target_size=(HEIGHT, WIDTH),
            num_inference_steps=2,
            guidance_scale=5.0,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        ).images
    finally:
        for h in handles:
            h.remove()
    assert latents.shape == (2, 4, 8, 8) and torch.isfinite(latents).all()
    assert len(calls) == 2 and len(add_inputs) == 2  # two steps, cond and uncond in one CFG batch

    # the UNet received exactly our crossattn and pooled, uncond first (diffusers' CFG order)
    want_crossattn = torch.cat([embeds["negative_prompt_embeds"], embeds["prompt_embeds"]])
    want_pooled = torch.cat([embeds["negative_pooled_prompt_embeds"], embeds["pooled_prompt_embeds"]])
    for call in calls:
        assert torch.equal(call["encoder_hidden_states"], want_crossattn)
        assert torch.equal(call["added_cond_kwargs"]["text_embeds"], want_pooled)
        time_ids = call["added_cond_kwargs"]["time_ids"]
        assert time_ids.tolist() == [[HEIGHT, WIDTH, *CROP, HEIGHT, WIDTH]] * 4

    # diffusers' own size embedding next to our pooled is our vector, bit for bit
    sizes = dict(width=WIDTH, height=HEIGHT, crop_top=CROP[0], crop_left=CROP[1])
    cond = engine.get_conditioning(prompts, opts, **sizes)
    uncond = engine.get_conditioning([negative] * 2, opts, is_negative=True, **sizes)
    want_vector = torch.cat([uncond["vector"], cond["vector"]])
    for got in add_inputs:
        assert got.shape == (4, 2816)
        assert torch.equal(got[:, :1280], want_vector[:, :1280])
        assert torch.equal(got[:, 1280:], want_vector[:, 1280:])


def test_time_proj_of_add_time_ids_is_our_size_embedding(pipe):
    """The UNet's ``add_time_proj`` (as SDXL configures it) against ``conditioning.size_embedding``."""
    from lib_llmcond.conditioning import size_embedding

    time_ids = torch.tensor(
        [[HEIGHT, WIDTH, *CROP, HEIGHT, WIDTH], [1024, 1024, 0, 0, 1024, 1024]], dtype=torch.float32
    )
    theirs = pipe.unet.add_time_proj(time_ids.flatten()).reshape(2, -1)
    ours = size_embedding(time_ids)
    assert theirs.shape == ours.shape == (2, 1536)
    assert torch.equal(theirs, ours), (theirs - ours).abs().max().item()
