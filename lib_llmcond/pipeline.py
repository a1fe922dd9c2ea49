"""Prompts -> adapter outputs for one loaded LLM + adapter pair.

A prompt becomes one or more *units* (BREAK blocks, long-prompt chunks); every unit of every prompt in a call
runs through the LLM and the adapter as one batch; the units of a prompt are concatenated back along the
sequence (308 tokens each) and its pooled vector comes from its first unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lib_llmcond import gpu_encode
from lib_llmcond.adapters.base import AdapterOutput
from lib_llmcond.encoders.llm import LLM
from lib_llmcond.heap import release_after_forward
from lib_llmcond.matmul_precision import matmul_precision
from lib_llmcond.progress import QUIET, Progress
from lib_llmcond.prompt.weights import MAPPING_POWERS
from lib_llmcond.text.paths import PromptTokens

EMPHASIS_MODES = ("None", "Ignore", "Original", "No norm")
SYNTAXES = ("full", "weights_only")
BREAK_MODES = ("paragraphs", "blocks")
MAPPINGS = tuple(MAPPING_POWERS)  # selectable emphasis mappings (README: Emphasis)
DEFAULT_MAPPING = "sharpened"


@dataclass(frozen=True)
class TextOptions:
    """Everything that changes how one text is encoded (part of every cache key)."""

    emphasis: str = "Original"
    emphasis_syntax: str = "full"
    break_mode: str = "paragraphs"
    system_prompt: str | None = None
    chunk: bool = False
    mapping: str = DEFAULT_MAPPING  # how input-token weights reach output tokens (README: Emphasis)

    def __post_init__(self) -> None:
        for value, allowed, label in (
            (self.emphasis, EMPHASIS_MODES, "emphasis"),
            (self.emphasis_syntax, SYNTAXES, "emphasis_syntax"),
            (self.break_mode, BREAK_MODES, "break_mode"),
            (self.mapping, MAPPINGS, "mapping"),
        ):
            if value not in allowed:
                raise ValueError(f"{label} must be one of {allowed}, not {value!r}")


@dataclass
class PromptReport:
    """What happened to one prompt: tokens reaching the adapter, its budget, the cut, how many 308-token blocks
    it became (``chunks``: every unit encoded) and how many of them are BREAK blocks (``blocks`` mode)."""

    tokens: int
    budget: int
    cut: object | None = None  # prompt.chunks.CutInfo
    chunks: int = 1
    blocks: int = 1

    def describe(self) -> str:
        text = f"{self.tokens}/{self.budget}"
        if self.blocks > 1:
            text += f", {self.blocks} blocks"
        if self.chunks > self.blocks:
            text += f", {self.chunks} chunks"
        if self.cut is not None:
            text += f", cut at token {self.cut.token_index} near {self.cut.snippet!r}"
        return text


@dataclass
class EncodedText:
    crossattn: torch.Tensor  # [T, 2048] fp32, T = 308 * units, on the encode device
    pooled: torch.Tensor  # [1280] fp32, on the encode device
    report: PromptReport


GPU_BUCKETS = (64, 128, 256, 512)


def adapter_token_counter(path, tokenizer):
    """A function counting the tokens of a text that would reach the adapter (before its budget cut)."""

    def count(text: str) -> int:
        row = path.tokenize(text, tokenizer)
        return row.adapter_end - row.adapter_start

    return count


def plan_batches(lengths: list[int], device: torch.device) -> list[tuple[list[int], int | None]]:
    """Which rows run together and the length they are padded to.

    CPU: one row at a time. The CPU is compute-bound, so a batch saves nothing there while padding costs
    compute, and a row's result is then bit-identical to encoding it alone. CUDA: all rows in one batch padded
    to a bucket length, so shapes repeat and the launch overhead is paid once.
    """
    if device.type == "cuda":
        longest = max(lengths)
        bucket = next((b for b in GPU_BUCKETS if b >= longest), -(-longest // 512) * 512)
        return [(list(range(len(lengths))), bucket)]
    return [([i], None) for i in range(len(lengths))]


@dataclass
class _Unit:
    owner: int  # index of the prompt it belongs to
    text: str
    spans: list = field(default_factory=list)
    whole: str | None = None  # the unchunked text when this unit is one chunk of it


class Pipeline:
    """Encode prompts with one LLM and one adapter."""

    def __init__(self, llm: LLM, adapter: torch.nn.Module, precision: str = "fp32") -> None:
        self.llm = llm
        self.adapter = adapter
        self.precision = precision  # fp32 matmuls: "fp32" (exact) or "tf32" (matmul_precision)
        self.static = llm.device.type != "cpu"  # accelerators: bucketed shapes and CUDA graphs (gpu_encode)

    @property
    def budget(self) -> int:
        return int(self.adapter.max_input_tokens)

    def text_path(self, opts: TextOptions):
        return self.llm.text_path_for(opts.system_prompt)

    # -- text -> units --------------------------------------------------------------------------------
    def _units(self, index: int, text: str, opts: TextOptions) -> list[_Unit]:
        if opts.emphasis == "None":
            pieces = [(text, [])]
        else:
            from lib_llmcond.prompt.emphasis import parse_prompt

            parsed = parse_prompt(text, syntax=opts.emphasis_syntax)
            if opts.break_mode == "blocks" and len(parsed.pieces) > 1:
                pieces = [(p.text, list(p.spans)) for p in parsed.pieces]
            else:
                pieces = [(parsed.text, list(parsed.spans))]
        units = []
        for piece_text, spans in pieces:
            chunks = self._chunks(piece_text, spans, opts) if opts.chunk else []
            if len(chunks) > 1:
                units.extend(_Unit(index, c.text, list(c.spans), whole=piece_text) for c in chunks)
            else:
                units.append(_Unit(index, piece_text, spans))
        return units

    def _chunks(self, text: str, spans: list, opts: TextOptions) -> list:
        from lib_llmcond.prompt.chunks import split_for_budget

        return split_for_budget(text, spans, self._counter(opts), self.budget)

    def _counter(self, opts: TextOptions):
        return adapter_token_counter(self.text_path(opts), self.llm.tokenizer)

    # -- units -> adapter outputs --------------------------------------------------------------------
    def _run(
        self, units: list[_Unit], opts: TextOptions, progress: Progress = QUIET
    ) -> tuple[list[PromptTokens], list[AdapterOutput]]:
        """Every unit through the LLM and the adapter; one :class:`AdapterOutput` (batch of 1) per unit."""
        path, tok = self.text_path(opts), self.llm.tokenizer
        rows = [path.tokenize(u.text, tok) for u in units]
        want_attention = opts.emphasis in ("Original", "No norm") and any(u.spans for u in units)
        with matmul_precision(self.precision, self.llm.device):
            static = None
            if self.static:
                progress.check(f"before encoding {len(rows)} row(s)")
                static = self._run_static(rows, path, want_attention)
            return rows, static if static is not None else self._run_eager(
                rows, path, want_attention, progress
            )

    def _run_static(self, rows: list[PromptTokens], path, want_attention: bool) -> list[AdapterOutput] | None:
        """All rows in one bucketed batch through :mod:`gpu_encode` (CUDA graphs); None where the layout
        has no static form (a row without adapter inputs)."""
        batch = path.batch(rows, self.llm.tokenizer)
        plan = gpu_encode.plan(batch, self.budget, self.llm.config.causal, self.llm.usable_prefix(batch))
        if plan is None:
            return None
        out = self.llm.graphs.run(
            self.llm, self.adapter, plan, attention=want_attention, tag=(self.precision,)
        )
        pads = batch.adapter_left_pad or [0] * len(rows)
        outs = []
        for k, (pad, n) in enumerate(zip(pads, plan.slots)):
            attention = None
            if out.attention is not None:  # slots back to adapter input positions (after any left padding)
                attention = torch.nn.functional.pad(out.attention[k : k + 1, :, :n], (pad, 0))
            outs.append(AdapterOutput(out.crossattn[k : k + 1], out.pooled[k : k + 1], attention))
        return outs

    def _run_eager(
        self, rows: list[PromptTokens], path, want_attention: bool, progress: Progress = QUIET
    ) -> list[AdapterOutput]:
        tok = self.llm.tokenizer
        outs: list[AdapterOutput | None] = [None] * len(rows)
        for members, pad_to in plan_batches([len(r.ids) for r in rows], self.llm.device):
            progress.check(f"before row {members[0] + 1} of {len(rows)}")
            batch = path.batch([rows[i] for i in members], tok, pad_to=pad_to)
            hidden = self.llm.hidden_states(batch)
            inputs, mask = self._adapter_inputs(hidden, batch)
            with torch.inference_mode():
                out = self.adapter(inputs, mask, return_attention=want_attention)
            release_after_forward(inputs.device, int(mask.numel()))
            for k, i in enumerate(members):
                attention = None if out.attention is None else out.attention[k : k + 1]
                outs[i] = AdapterOutput(out.crossattn[k : k + 1], out.pooled[k : k + 1], attention)
        return outs  # type: ignore[return-value]

    def _adapter_inputs(self, hidden: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row slices of the LLM output placed as the adapter expects them (after any masked left padding),
        cut to the adapter's budget and right-padded, with their mask."""
        budget, device = self.budget, self.adapter_device
        pads = batch.adapter_left_pad or [0] * len(batch.adapter_slices)
        lengths = [pad + (sl.stop - sl.start) for pad, sl in zip(pads, batch.adapter_slices)]
        length = min(max(lengths), budget)
        x = torch.zeros(len(lengths), length, hidden.shape[-1], dtype=torch.float32, device=device)
        mask = torch.zeros(len(lengths), length, dtype=torch.float32, device=device)
        for i, (pad, sl) in enumerate(zip(pads, batch.adapter_slices)):
            h = hidden[i, sl][: max(0, budget - pad)]
            x[i, pad : pad + h.shape[0]] = h.to(device=device, dtype=torch.float32)
            if batch.adapter_mask:
                m = batch.attention_mask[i, sl][: h.shape[0]]
                mask[i, pad : pad + h.shape[0]] = m.to(device=device, dtype=torch.float32)
            else:
                mask[i, pad : pad + h.shape[0]] = 1.0
        return x, mask

    @property
    def adapter_device(self) -> torch.device:
        return next(self.adapter.parameters()).device

    # -- emphasis and reports -------------------------------------------------------------------------
    def _emphasised(self, unit: _Unit, row: PromptTokens, out: AdapterOutput, opts) -> torch.Tensor:
        crossattn = out.crossattn[0]
        if out.attention is None or not unit.spans:
            return crossattn
        from lib_llmcond.prompt.weights import apply_emphasis, output_multipliers, token_weights

        offsets = self.text_path(opts).adapter_offsets(row, self.llm.tokenizer)[: self.budget]
        w = gpu_encode.to_device(torch.tensor(token_weights(offsets, unit.spans)), crossattn.device)
        attn = out.attention[:, :, : w.shape[0]]
        mult = output_multipliers(attn, w[None], mode=opts.mapping)
        return apply_emphasis(crossattn[None], mult, opts.emphasis)[0]

    def _report(self, units: list[_Unit], rows: list[PromptTokens], opts: TextOptions) -> PromptReport:
        count = self._counter(opts)
        wholes = dict.fromkeys(u.whole for u in units if u.whole is not None)  # chunked pieces, in order
        tokens = sum(r.adapter_end - r.adapter_start for u, r in zip(units, rows) if u.whole is None)
        tokens += sum(count(w) for w in wholes)
        cut = None
        for unit, row in zip(units, rows):
            if row.adapter_end - row.adapter_start > self.budget and cut is None:
                from lib_llmcond.prompt.chunks import cut_report

                offsets = row.offsets[row.adapter_start : row.adapter_end]
                cut = cut_report(unit.text, offsets, self.budget)
        blocks = sum(u.whole is None for u in units) + len(wholes)  # BREAK pieces, chunked or not
        return PromptReport(tokens=tokens, budget=self.budget, cut=cut, chunks=len(units), blocks=blocks)

    # -- public ---------------------------------------------------------------------------------------
    def encode(self, texts: list[str], opts: TextOptions, progress: Progress = QUIET) -> list[EncodedText]:
        """Encode ``texts`` as one batch; returns one :class:`EncodedText` per text, in order."""
        units = [u for i, t in enumerate(texts) for u in self._units(i, t, opts)]
        rows, outs = self._run(units, opts, progress)
        results = []
        for index in range(len(texts)):
            mine = [k for k, u in enumerate(units) if u.owner == index]
            blocks = [self._emphasised(units[k], rows[k], outs[k], opts) for k in mine]
            results.append(
                EncodedText(
                    crossattn=torch.cat(blocks, dim=0).float(),
                    pooled=outs[mine[0]].pooled[0].float(),
                    report=self._report([units[k] for k in mine], [rows[k] for k in mine], opts),
                )
            )
        return results
