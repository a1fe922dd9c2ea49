"""A tiny random diffusers UNet with SDXL's conditioning interface (2048-wide crossattn, ``text_time`` added
conditioning): shared by the UNet step test and the diffusers pipeline test."""

from __future__ import annotations


def tiny_sdxl_unet(time_dim: int = 256):
    """``UNet2DConditionModel`` at toy width; ``time_dim`` is the size embedding width per value (SDXL: 256)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
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
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=1280 + 6 * time_dim,
    )
