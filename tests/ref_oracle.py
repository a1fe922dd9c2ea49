"""The reference text path, rebuilt from its specification (reference.md §2-§3) as an oracle for our pipeline.

LLM: transformers' own Gemma-3 classes and its own tokenizer class, the chat text rendered as the reference's
chat template renders it, ``hidden_states[-1][:, skip:]`` cast to fp32. Adapter: a module written from the
architecture table with torch's stock ``nn.MultiheadAttention``/``nn.LayerNorm``/``nn.GELU``, loaded strictly from
the same file. Nothing here imports llmcond's encoder, tokenizer or adapter code.
"""

from __future__ import annotations

import re

import torch
from safetensors.torch import load_file
from torch import nn

SYSTEM = (
    "You are expert in understanding of user prompts for image generations. "
    "Create an image according to the prompt from user."
)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x, pad=None):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class RefAdapter(nn.Module):
    """LLMToSDXLAdapter per the architecture table; every size read from the state dict, 16 heads."""

    def __init__(self, sd: dict[str, torch.Tensor], heads: int = 16) -> None:
        super().__init__()
        dim = sd["compression_queries"].shape[-1]
        mlp = sd["wide_attention_blocks.0.mlp.0.weight"].shape[0]
        n_wide = len({k.split(".")[1] for k in sd if k.startswith("wide_attention_blocks.")})
        n_narrow = len({k.split(".")[1] for k in sd if k.startswith("narrow_attention_blocks.")})
        if "seq_projection.weight" in sd:
            self.seq_projection = nn.Linear(sd["seq_projection.weight"].shape[1], dim)
        self.input_position_embeddings = nn.Parameter(sd["input_position_embeddings"].clone())
        self.wide_attention_blocks = nn.ModuleList(Block(dim, heads, mlp) for _ in range(n_wide))
        self.compression_queries = nn.Parameter(sd["compression_queries"].clone())
        self.compression_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.compression_gate = nn.Sequential(nn.Linear(2 * dim, dim), nn.Sigmoid())
        self.compression_norm = nn.LayerNorm(dim)
        self.output_position_embeddings = nn.Parameter(sd["output_position_embeddings"].clone())
        self.narrow_attention_blocks = nn.ModuleList(Block(dim, heads, mlp) for _ in range(n_narrow))
        self.pooling_token = nn.Parameter(sd["pooling_token"].clone())
        self.pooling_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        pooled = sd["pooled_projection.4.weight"].shape[0]
        self.pooled_projection = nn.Sequential(
            nn.Linear(dim, dim), nn.LayerNorm(dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(dim, pooled)
        )
        self.load_state_dict(sd, strict=True)
        self.eval()

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None):
        x = self.seq_projection(h) if hasattr(self, "seq_projection") else h
        n = self.input_position_embeddings.shape[1]
        length = x.shape[1]
        if length > n:
            x, mask = x[:, :n], None if mask is None else mask[:, :n]
            length = n
        if length < n:
            x = torch.cat([x, x.new_zeros(x.shape[0], n - length, x.shape[2])], dim=1)
            if mask is not None:
                mask = torch.cat([mask, mask.new_zeros(mask.shape[0], n - mask.shape[1])], dim=1)
            else:
                mask = torch.cat([x.new_ones(x.shape[0], length), x.new_zeros(x.shape[0], n - length)], dim=1)
        x = x + self.input_position_embeddings
        pad = None if mask is None else ~mask.bool()
        for blk in self.wide_attention_blocks:
            x = blk(x, pad)
        q = self.compression_queries.expand(x.shape[0], -1, -1)
        c = self.compression_attention(q, x, x, key_padding_mask=pad, need_weights=False)[0]
        g = self.compression_gate(torch.cat([q, c], dim=-1))
        x = self.compression_norm(g * c + (1 - g) * q) + self.output_position_embeddings
        for blk in self.narrow_attention_blocks:
            x = blk(x)
        p = self.pooling_attention(self.pooling_token.expand(x.shape[0], -1, -1), x, x, need_weights=False)[0]
        return x, self.pooled_projection(p.squeeze(1))


def render_gemma_chat(prompt: str, system: str = SYSTEM) -> str:
    """What Gemma-3's chat template renders for [system, user] with a generation prompt."""
    return f"<bos><start_of_turn>user\n{system}\n\n{prompt.strip()}<end_of_turn>\n<start_of_turn>model\n"


def hf_gemma_tokenizer(directory):
    from transformers import GemmaTokenizer

    return GemmaTokenizer(vocab_file=str(directory / "tokenizer.model"), add_bos_token=False)


@torch.no_grad()
def reference_gemma(llm_dir, adapter_file, prompt: str, skip: int = 27, dtype=torch.float32):
    """(crossattn [1,308,2048], pooled [1,1280]) the way the reference nodes compute them."""
    from transformers import Gemma3ForCausalLM

    tok = hf_gemma_tokenizer(llm_dir)
    ids = tok(render_gemma_chat(prompt), add_special_tokens=False, return_tensors="pt").input_ids
    model = Gemma3ForCausalLM.from_pretrained(llm_dir, dtype=dtype, attn_implementation="eager").eval()
    hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][:, skip:].float()
    adapter = RefAdapter(load_file(str(adapter_file)))
    return adapter(hidden)


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


@torch.no_grad()
def reference_t5gemma(llm_dir, adapter_file, prompt: str, dtype=torch.float32, max_length: int = 512):
    """The reference's T5Gemma path: tokenizer(prompt + "<eos>", padding to 512, truncation), encoder, mask."""
    from transformers import GemmaTokenizer, T5GemmaEncoderModel

    tok = GemmaTokenizer(vocab_file=str(llm_dir / "tokenizer.model"), add_bos_token=True, padding_side="left")
    inputs = tok(
        prompt + "<eos>", return_tensors="pt", padding="max_length", max_length=max_length, truncation=True
    )
    model = T5GemmaEncoderModel.from_pretrained(
        llm_dir, is_encoder_decoder=False, dtype=dtype, attn_implementation="eager"
    ).eval()
    hidden = model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).last_hidden_state.float()
    adapter = RefAdapter(load_file(str(adapter_file)))
    return adapter(hidden, inputs.attention_mask), inputs
