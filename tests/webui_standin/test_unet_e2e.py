"""End to end: llmcond's conditioning, through the stand-in host's call chain and our hook, drives a tiny
SDXL-shaped diffusers UNet (cross_attention_dim 2048, "text_time" added conditioning); a prompt change changes
the UNet's output. Runs where diffusers is installed (.venv-gradio4).

The whole library runs for real: the tiny random Gemma-3 directory and adapter (``lib_llmcond.tiny``) sit in
the stand-in host's ``models/LLM`` and ``models/llm_adapters`` folders, and the real ``Engine`` encodes.
"""

from __future__ import annotations

import needs
import pytest
import torch

diffusers = needs.module("diffusers", "diffusers")

from lib_llmcond.conditioning import make_vector  # noqa: E402

TIME_DIM = 8


@pytest.fixture
def real_stand(tmp_path, monkeypatch):
    """A stand-in A1111 with llmcond's script, the real Engine and real tiny models in its model folders."""
    from lib_llmcond.tiny import build_demo_models
    from webui_standin.conftest import real_engine_stand

    models = tmp_path / "models"
    build_demo_models(models)
    with real_engine_stand("a1111", models) as s:
        yield s


@pytest.fixture(scope="module")
def unet():
    from tiny_sdxl import tiny_sdxl_unet

    model = tiny_sdxl_unet(TIME_DIM)
    return model.eval()


def unet_step(unet, cond: dict, width: int, height: int) -> torch.Tensor:
    crossattn, vector = cond["crossattn"][None], cond["vector"][None]
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return unet(
            sample,
            500,
            encoder_hidden_states=crossattn,
            added_cond_kwargs={"text_embeds": vector[:, :1280], "time_ids": time_ids},
        ).sample


def test_prompt_change_changes_the_unet_output(real_stand, unet):
    args = real_stand.args(llm="tiny-gemma3", adapter="tiny-adapter.safetensors", device="cpu")

    def run(prompt):
        p, _ = real_stand.txt2img(script_args=args, prompt=prompt, width=832, height=1216)
        cond = p.sampled[0].c.batch[0][0].schedules[0].cond
        assert cond["crossattn"].shape == (308, 2048) and cond["vector"].shape == (2816,)
        return cond, unet_step(unet, cond, 832, 1216)

    cond_a, out_a = run("a red fox in the snow")
    _, out_a2 = run("a red fox in the snow")
    cond_b, out_b = run("a blue whale in the sea")
    assert torch.isfinite(out_a).all() and out_a.shape == (1, 4, 8, 8)
    assert torch.equal(out_a, out_a2)  # same prompt: same conds and the same output
    assert not torch.allclose(out_a, out_b, atol=1e-4)
    assert not torch.equal(cond_a["crossattn"], cond_b["crossattn"])
    assert torch.equal(
        cond_a["vector"][1280:], make_vector(torch.zeros(1, 1280), height=1216, width=832)[0, 1280:]
    )


def test_vector_size_part_matches_diffusers_time_embedding():
    """Independent oracle for the 2816-d vector's size embeddings: diffusers' Timesteps as SDXL configures it
    (flip_sin_to_cos=True, downscale_freq_shift=0, 256 features per value)."""
    from diffusers.models.embeddings import Timesteps

    sizes = [1216, 832, 16, 32, 1216, 832]
    vector = make_vector(torch.zeros(2, 1280), height=1216, width=832, crop_top=16, crop_left=32)
    want = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)(
        torch.tensor(sizes, dtype=torch.float32)
    )
    assert torch.allclose(vector[0, 1280:], want.reshape(-1), atol=1e-5)
    assert torch.equal(vector[0], vector[1])
