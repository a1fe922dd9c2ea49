"""End to end: llmcond's conditioning, through the stand-in host's call chain and our hook, drives a tiny
SDXL-shaped diffusers UNet (cross_attention_dim 2048, "text_time" added conditioning); a prompt change changes
the UNet's output. Runs where diffusers is installed (.venv-gradio4).

The engine here runs the real adapter (a tiny random one, ``lib_llmcond.tiny``) and the real ``make_vector``;
the LLM's hidden states are text-seeded random tensors until the tiny LLMs land.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from lib_llmcond.adapters.loader import load_adapter  # noqa: E402
from lib_llmcond.conditioning import make_vector  # noqa: E402
from lib_llmcond.tiny import adapter as tiny  # noqa: E402
from webui_standin import fakes  # noqa: E402
from webui_standin.host import text_seed  # noqa: E402

LLM_DIM = 32
TIME_DIM = 8


class AdapterEngine(fakes.FakeEngine):
    """``Engine.get_conditioning`` with a real adapter and vector; hidden states stand in for the LLM's."""

    def __init__(self, adapter):
        super().__init__()
        self.adapter = adapter

    def get_conditioning(
        self,
        texts,
        opts,
        *,
        width,
        height,
        crop_top=0,
        crop_left=0,
        is_negative=False,
        reports=None,
        prefetch=(),
    ):
        self.calls.append(
            fakes.Call(list(texts), opts, width, height, crop_top, crop_left, is_negative, False, "")
        )
        rows = []
        for t in texts:
            g = torch.Generator().manual_seed(text_seed("hidden", t))
            rows.append(torch.randn(1, 4 + len(t.split()), LLM_DIM, generator=g))
        outs = [self.adapter(h) for h in rows]
        crossattn = torch.cat([o.crossattn for o in outs])
        pooled = torch.cat([o.pooled for o in outs])
        vector = make_vector(pooled, height=height, width=width, crop_top=crop_top, crop_left=crop_left)
        return {"crossattn": crossattn, "vector": vector}


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    path = tmp_path_factory.mktemp("adapter") / "tiny.safetensors"
    config = tiny.llm_to_sdxl_config(LLM_DIM, n_wide=1, n_narrow=1, mlp_hidden=64)
    tiny.save_tensors(path, tiny.to_layout(tiny.llm_to_sdxl_state_dict(config, 1), "ref"), torch.float32, {})
    return load_adapter(path)


@pytest.fixture(scope="module")
def unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    model = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2048,
        attention_head_dim=(2, 4),
        norm_num_groups=16,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=1280 + 6 * TIME_DIM,
    )
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


def test_prompt_change_changes_the_unet_output(a1111, adapter, unet):
    from lib_llmcond.webui import script

    engine = AdapterEngine(adapter)
    script.runtime.set_engine(engine)

    def run(prompt):
        p, _ = a1111.txt2img(prompt=prompt, width=832, height=1216)
        cond = p.sampled[0].c.batch[0][0].schedules[0].cond
        assert cond["crossattn"].shape == (308, 2048) and cond["vector"].shape == (2816,)
        return cond, unet_step(unet, cond, 832, 1216)

    cond_a, out_a = run("a red fox in the snow")
    _, out_a2 = run("a red fox in the snow")
    cond_b, out_b = run("a blue whale in the sea")
    assert [c.texts for c in engine.calls if not c.is_negative] == [
        ["a red fox in the snow"],
        ["a blue whale in the sea"],
    ]
    assert torch.isfinite(out_a).all() and out_a.shape == (1, 4, 8, 8)
    assert torch.equal(out_a, out_a2)  # same prompt: same conds (host cache) and the same output
    assert not torch.allclose(out_a, out_b, atol=1e-4)
    assert not torch.equal(cond_a["crossattn"], cond_b["crossattn"])


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
