"""Per-family text paths: what text the LLM sees, which of its tokens reach the adapter, and how rows are batched.

- Gemma-3 (causal, chat template, reference.md §3.1): the skip is the token count of the rendered system prefix,
  computed from offsets; batches are right-padded so every real token sees exactly what it sees alone, positions
  0..n-1; every token from the skip to the row's end goes to the adapter (which keeps the first 512), no mask.
- T5Gemma (bidirectional encoder, §3.3): ``prompt + "<eos>"`` with the tokenizer's own ``<bos>``, truncated and padded
  to 512 on the tokenizer's padding side, positions 0..L-1 over the padded row (as transformers' encoder numbers
  them when no position ids are given), the whole row and its mask go to the adapter.
- Qwen3 (§3.4, format UNVERIFIED): the caption as plain text, no template and no added tokens (Qwen adds none),
  truncated to 256 tokens (the card's training length), right-padded, mask to the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from lib_llmcond.text.tokenizer import Tokenizer

GEMMA_SYSTEM_PROMPT = (
    "You are expert in understanding of user prompts for image generations. "
    "Create an image according to the prompt from user."
)
ADAPTER_MAX_TOKENS = 512
T5GEMMA_MAX_LENGTH = 512
QWEN_MAX_LENGTH = 256

Span = tuple[int, int]


@dataclass(frozen=True)
class PromptTokens:
    """One prompt, before padding."""

    ids: list[int]
    offsets: list[Span | None]  # span in the *prompt* text; None for template tokens
    adapter_start: int  # first token that reaches the adapter (the skip)
    adapter_end: int  # one past the last token that reaches the adapter
    total_prompt_tokens: int  # tokens of the user's prompt (for the counter / cut report)
    # Filled by every path: prompt tokens the adapter reads (after its own cut), and the prompt span of the first
    # prompt token it does not read (None when nothing is cut). For the counter and the cut report.
    adapter_prompt_tokens: int = 0
    cut_span: Span | None = None


@dataclass
class TokenBatch:
    input_ids: torch.LongTensor  # [B, L]
    attention_mask: torch.LongTensor  # [B, L], 1 = real token
    position_ids: torch.LongTensor  # [B, L]
    rows: list[PromptTokens]
    adapter_slices: list[slice]  # per row, the positions of the LLM output that go to the adapter
    adapter_mask: bool  # pass attention_mask[row, slice] to the adapter (T5Gemma) or ones (Gemma)


class TextPath(Protocol):
    def tokenize(self, prompt: str, tokenizer: Tokenizer) -> PromptTokens: ...

    def batch(
        self, rows: list[PromptTokens], tokenizer: Tokenizer, pad_to: int | None = None
    ) -> TokenBatch: ...


def _to_prompt_spans(offsets: list[Span], start: int, stop: int, shift: int) -> list[Span | None]:
    """Offsets in a rendered text -> spans in the caller's prompt. ``[start, stop)`` is where the (stripped) prompt
    sits in the rendered text and ``shift`` is its index in the caller's string; tokens outside are None."""
    out: list[Span | None] = []
    for a, b in offsets:
        lo, hi = max(a, start), min(b, stop)
        out.append((lo - start + shift, hi - start + shift) if lo < hi else None)
    return out


def _budget(offsets: list[Span | None], start: int, budget: int) -> tuple[int, Span | None]:
    """(prompt tokens in ``offsets[start:start+budget]``, span of the first prompt token past it)."""
    inside = sum(o is not None for o in offsets[start : start + budget])
    cut = next((o for o in offsets[start + budget :] if o is not None), None)
    return inside, cut


def _pad_rows(
    rows: list[PromptTokens], pad_id: int, side: str, length: int
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Padded ids, mask and each row's left pad count."""
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    lefts = []
    for r, row in enumerate(rows):
        n = len(row.ids)
        left = length - n if side == "left" else 0
        ids[r, left : left + n] = torch.tensor(row.ids, dtype=torch.long)
        mask[r, left : left + n] = 1
        lefts.append(left)
    return ids, mask, lefts


def _check_pad_to(rows: list[PromptTokens], pad_to: int | None) -> int:
    longest = max((len(r.ids) for r in rows), default=0)
    if pad_to is None:
        return longest
    if pad_to < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest row ({longest} tokens)")
    return pad_to


@dataclass(frozen=True)
class GemmaChatPath:
    """Gemma-3 chat template with a system prompt; the skip is computed, never a constant."""

    system_prompt: str = GEMMA_SYSTEM_PROMPT
    max_adapter_tokens: int = ADAPTER_MAX_TOKENS

    def prefix(self) -> str:
        return f"<bos><start_of_turn>user\n{self.system_prompt}\n\n"

    @staticmethod
    def suffix() -> str:
        return "<end_of_turn>\n<start_of_turn>model\n"

    def render(self, prompt: str) -> str:
        return self.prefix() + prompt.strip() + self.suffix()

    def tokenize(self, prompt: str, tokenizer: Tokenizer) -> PromptTokens:
        stripped = prompt.strip()
        lead = len(prompt) - len(prompt.lstrip())
        start = len(self.prefix())
        enc = tokenizer.encode(self.prefix() + stripped + self.suffix())
        skip = sum(1 for _, b in enc.offsets if b <= start)
        offsets = _to_prompt_spans(enc.offsets, start, start + len(stripped), lead)
        inside, cut = _budget(offsets, skip, self.max_adapter_tokens)
        return PromptTokens(
            ids=enc.ids,
            offsets=offsets,
            adapter_start=skip,
            adapter_end=len(enc.ids),
            total_prompt_tokens=sum(o is not None for o in offsets),
            adapter_prompt_tokens=inside,
            cut_span=cut,
        )

    def batch(self, rows: list[PromptTokens], tokenizer: Tokenizer, pad_to: int | None = None) -> TokenBatch:
        length = _check_pad_to(rows, pad_to)
        ids, mask, _ = _pad_rows(rows, tokenizer.pad_id, "right", length)
        positions = torch.arange(length, dtype=torch.long).expand(len(rows), length).clone()
        slices = [slice(r.adapter_start, r.adapter_end) for r in rows]
        return TokenBatch(ids, mask, positions, list(rows), slices, adapter_mask=False)


@dataclass(frozen=True)
class T5GemmaPath:
    """REF's T5Gemma call: ``tokenizer(prompt + "<eos>", padding="max_length", max_length=512, truncation=True)``."""

    max_length: int = T5GEMMA_MAX_LENGTH

    def tokenize(self, prompt: str, tokenizer: Tokenizer) -> PromptTokens:
        enc = tokenizer.encode(prompt + "<eos>")
        head = [tokenizer.bos_id] if tokenizer.add_bos else []
        tail = [tokenizer.eos_id] if tokenizer.add_eos else []
        room = self.max_length - len(head) - len(tail)
        body_ids, body_offsets = enc.ids[:room], enc.offsets[:room]
        prompt_spans = _to_prompt_spans(enc.offsets, 0, len(prompt), 0)
        kept = _to_prompt_spans(body_offsets, 0, len(prompt), 0)
        ids = head + body_ids + tail
        offsets = [None] * len(head) + kept + [None] * len(tail)
        inside, cut = _budget(prompt_spans, 0, room)
        return PromptTokens(
            ids=[int(i) for i in ids],  # type: ignore[misc]
            offsets=offsets,
            adapter_start=0,
            adapter_end=len(ids),
            total_prompt_tokens=sum(o is not None for o in prompt_spans),
            adapter_prompt_tokens=inside,
            cut_span=cut,
        )

    def batch(self, rows: list[PromptTokens], tokenizer: Tokenizer, pad_to: int | None = None) -> TokenBatch:
        length = _check_pad_to(rows, pad_to if pad_to is not None else self.max_length)
        side = tokenizer.padding_side
        ids, mask, _ = _pad_rows(rows, tokenizer.pad_id, side, length)
        positions = torch.arange(length, dtype=torch.long).expand(len(rows), length).clone()
        slices = [slice(0, length) for _ in rows]
        return TokenBatch(ids, mask, positions, list(rows), slices, adapter_mask=True)


@dataclass(frozen=True)
class QwenPlainPath:
    """ASSUMED Qwen3 format (molbal's card does not say): the caption as plain text, no template, no added tokens,
    at most 256 tokens, right padding, mask to the adapter. Replace when the training code is known."""

    max_length: int = QWEN_MAX_LENGTH

    def tokenize(self, prompt: str, tokenizer: Tokenizer) -> PromptTokens:
        enc = tokenizer.encode(prompt)
        offsets = _to_prompt_spans(enc.offsets, 0, len(prompt), 0)
        kept = min(len(enc.ids), self.max_length)
        inside, cut = _budget(offsets, 0, kept)
        return PromptTokens(
            ids=enc.ids[:kept],
            offsets=offsets[:kept],
            adapter_start=0,
            adapter_end=kept,
            total_prompt_tokens=sum(o is not None for o in offsets),
            adapter_prompt_tokens=inside,
            cut_span=cut,
        )

    def batch(self, rows: list[PromptTokens], tokenizer: Tokenizer, pad_to: int | None = None) -> TokenBatch:
        length = _check_pad_to(rows, pad_to)
        ids, mask, _ = _pad_rows(rows, tokenizer.pad_id, "right", length)
        positions = torch.arange(length, dtype=torch.long).expand(len(rows), length).clone()
        slices = [slice(0, len(r.ids)) for r in rows]
        return TokenBatch(ids, mask, positions, list(rows), slices, adapter_mask=True)


FAMILIES = ("gemma3", "t5gemma", "qwen3")


def text_path_for(family: str, system_prompt: str | None = None) -> TextPath:
    """The text path of a model family ("gemma3", "t5gemma" or "qwen3"). ``system_prompt`` (None: the reference's)
    is used by the Gemma-3 chat template only; the other families have no system prompt and ignore it."""
    if family == "gemma3":
        return GemmaChatPath() if system_prompt is None else GemmaChatPath(system_prompt=system_prompt)
    if family == "t5gemma":
        return T5GemmaPath()
    if family == "qwen3":
        return QwenPlainPath()
    raise ValueError(f"unknown text family {family!r}; expected one of {', '.join(FAMILIES)}")
