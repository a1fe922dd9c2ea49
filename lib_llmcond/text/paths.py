"""Per-family text paths: prompt -> token rows -> padded batches, exactly as the reference builds them.

- Gemma-3 (causal): the chat template with the system prompt; the skip is the number of tokens of the rendered
  system prefix (27 with the reference's system prompt on the real tokenizer), computed, never hard-coded.
  Batches are padded on the right with positions 0..n-1, so every row sees exactly what it sees alone.
- T5Gemma (bidirectional): ``<bos>`` + prompt + ``<eos>``, truncated and padded to 512 on the tokenizer's own
  side, positions 0..511 as the reference's encoder uses them; the mask reaches the adapter.
- Qwen3: the prompt alone (molbal's format is unverified; see the README), right padded, mask to the adapter.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from operator import itemgetter
from typing import Protocol

import torch

from lib_llmcond.text.tokenizer import Tokenizer

GEMMA_SYSTEM_PROMPT = (
    "You are expert in understanding of user prompts for image generations. "
    "Create an image according to the prompt from user."
)
T5GEMMA_LENGTH = 512

Offset = tuple[int, int] | None


@dataclass(frozen=True)
class PromptTokens:
    ids: list[int]
    offsets: list[Offset]  # span in the caller's prompt string; None for template tokens
    adapter_start: int
    adapter_end: int
    total_prompt_tokens: int


@dataclass
class TokenBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    rows: list[PromptTokens]
    adapter_slices: list[slice]
    adapter_mask: bool
    adapter_left_pad: list[int] | None = (
        None  # masked zero positions the adapter sees before each row's slice
    )
    shared_prefix: int = 0  # leading tokens identical in every row, at positions 0.., that no adapter reads


def shared_prefix(rows: list[PromptTokens]) -> int:
    """Length of the token prefix all rows share, within the part no row passes to the adapter."""
    limit = min(r.adapter_start for r in rows)
    first = rows[0].ids
    n = 0
    while n < limit and all(r.ids[n] == first[n] for r in rows):
        n += 1
    return n


class TextPath(Protocol):
    def tokenize(self, prompt: str, tokenizer: Tokenizer) -> PromptTokens: ...

    def adapter_offsets(self, row: PromptTokens, tokenizer: Tokenizer) -> list[Offset]:
        """Offsets of the adapter's inputs in batch order (before the adapter's own cut to its budget)."""
        ...

    def batch(
        self, rows: list[PromptTokens], tokenizer: Tokenizer, pad_to: int | None = None
    ) -> TokenBatch: ...


_START, _END = itemgetter(0), itemgetter(1)


def _window(spans: list[tuple[int, int]], start: int, end: int) -> list[Offset]:
    """The spans inside [start, end); None elsewhere (a token straddling an edge keeps its part inside). The
    spans are in text order (tokenizer.py), so the tokens touching the window are one run, found by
    bisection, and only the run's ends can straddle."""
    first = bisect_right(spans, start, key=_END)  # tokens before it end at or before ``start``
    stop = bisect_left(spans, end, key=_START)  # tokens from it on start at or after ``end``
    out: list[Offset] = [None] * len(spans)
    out[first:stop] = spans[first:stop]
    head = bisect_left(spans, start, key=_START)  # tokens before it start before ``start``
    tail = bisect_right(spans, end, key=_END)  # tokens from it on end after ``end``
    for k in {*range(first, head), *range(max(first, tail), stop)}:
        s, e = spans[k]
        out[k] = (max(s, start), min(e, end))
    return out


def _right_padded(
    rows: list[PromptTokens], pad_id: int, pad_to: int | None, mask_to_adapter: bool
) -> TokenBatch:
    length = max(len(r.ids) for r in rows)
    if pad_to is not None:
        length = max(length, pad_to)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids, dtype=torch.long)
        mask[i, : len(r.ids)] = 1
    positions = torch.arange(length).expand(len(rows), length).clone()
    slices = [slice(r.adapter_start, r.adapter_end) for r in rows]
    return TokenBatch(ids, mask, positions, rows, slices, mask_to_adapter)


@dataclass(frozen=True)
class GemmaChatPath:
    system_prompt: str = GEMMA_SYSTEM_PROMPT

    @property
    def prefix(self) -> str:
        return f"<bos><start_of_turn>user\n{self.system_prompt}\n\n"

    suffix = "<end_of_turn>\n<start_of_turn>model\n"

    def tokenize(self, prompt: str, tokenizer: Tokenizer) -> PromptTokens:
        stripped = prompt.strip()
        lead = len(prompt) - len(prompt.lstrip())
        prefix = self.prefix
        # offsets counted from where the prompt starts in the caller's string (its leading spaces cut)
        enc = tokenizer.encode(prefix + stripped + self.suffix, origin=len(prefix) - lead)
        skip = bisect_left(enc.offsets, lead, key=_START)  # the tokens starting in the template
        offsets = _window(enc.offsets, lead, lead + len(stripped))
        offsets[:skip] = [None] * skip
        n_prompt = len(offsets) - offsets.count(None)
        return PromptTokens(enc.ids, offsets, skip, len(enc.ids), n_prompt)

    def batch(self, rows: list[PromptTokens], tokenizer: Tokenizer, pad_to: int | None = None) -> TokenBatch:
        batch = _right_padded(rows, tokenizer.pad_id, pad_to, mask_to_adapter=False)
        batch.shared_prefix = shared_prefix(rows)
        return batch

    def adapter_offsets(self, row: PromptTokens, tokenizer: Tokenizer) -> list[Offset]:
        return list(row.offsets[row.adapter_start : row.adapter_end])


@dataclass(frozen=True)
class T5GemmaPath:
    length: int = T5GEMMA_LENGTH

    def tokenize(self, prompt: str, tokenizer: Tokenizer) -> PromptTokens:
        enc = tokenizer.encode(prompt + "<eos>")
        ids, offsets = list(enc.ids), _window(enc.offsets, 0, len(prompt))
        if tokenizer.special.add_bos and tokenizer.bos_id is not None:
            ids, offsets = [tokenizer.bos_id, *ids], [None, *offsets]
        n_prompt = len(offsets) - offsets.count(None)
        return PromptTokens(ids, offsets, 0, len(ids), n_prompt)  # truncated to 512 in batch()

    def batch(self, rows: list[PromptTokens], tokenizer: Tokenizer, pad_to: int | None = None) -> TokenBatch:
        """The reference pads every prompt to 512 on the tokenizer's side and masks the padding. Masked
        positions never reach a real token (bidirectional attention masks them as keys, and so does the
        adapter), so only the real tokens are run, at the positions the padded layout gives them; the adapter
        sees the same 512-long layout with masked zeros where the padding was."""
        n = len(rows)
        kept = [min(len(r.ids), self.length) for r in rows]
        longest = max(max(kept), pad_to or 0)
        ids = torch.full((n, longest), tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((n, longest), dtype=torch.long)
        positions = torch.zeros((n, longest), dtype=torch.long)
        left = tokenizer.padding_side == "left"
        pads = []
        for i, (r, k) in enumerate(zip(rows, kept)):
            ids[i, :k] = torch.tensor(r.ids[:k], dtype=torch.long)
            mask[i, :k] = 1
            start = self.length - k if left else 0
            positions[i] = torch.arange(start, start + longest)
            pads.append(start)
        slices = [slice(0, k) for k in kept]
        return TokenBatch(ids, mask, positions, rows, slices, adapter_mask=True, adapter_left_pad=pads)

    def adapter_offsets(self, row: PromptTokens, tokenizer: Tokenizer) -> list[Offset]:
        """Offsets of the 512 adapter inputs (padding included) in batch order."""
        kept = list(row.offsets[: self.length])
        pad = [None] * (self.length - len(kept))
        return pad + kept if tokenizer.padding_side == "left" else kept + pad


@dataclass(frozen=True)
class PlainPath:
    """The prompt alone (Qwen3 + Perceiver resampler: format unverified), right padded, mask to the adapter."""

    def tokenize(self, prompt: str, tokenizer: Tokenizer) -> PromptTokens:
        enc = tokenizer.encode(prompt)
        offsets: list[Offset] = list(enc.offsets)
        if not enc.ids:  # an empty prompt still needs one position
            eos = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.pad_id
            return PromptTokens([eos], [None], 0, 1, 0)
        return PromptTokens(list(enc.ids), offsets, 0, len(enc.ids), len(enc.ids))

    def batch(self, rows: list[PromptTokens], tokenizer: Tokenizer, pad_to: int | None = None) -> TokenBatch:
        return _right_padded(rows, tokenizer.pad_id, pad_to, mask_to_adapter=True)

    def adapter_offsets(self, row: PromptTokens, tokenizer: Tokenizer) -> list[Offset]:
        return list(row.offsets[row.adapter_start : row.adapter_end])


def text_path(family: str, system_prompt: str | None = None) -> TextPath:
    if family == "gemma3":
        return GemmaChatPath(system_prompt if system_prompt is not None else GEMMA_SYSTEM_PROMPT)
    if family == "t5gemma":
        return T5GemmaPath()
    return PlainPath()
