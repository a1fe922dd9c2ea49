"""Test doubles for the host-integration tests: an engine with the real ``Engine``'s interface whose output is a
known function of (text, options, size), so tests can check which texts reached it and with which options.
Numerics of the real engine are tested elsewhere; the end-to-end test uses the real tiny models."""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass, fields

import torch

from webui_standin.host import size_part, text_seed

TOKENS = 308


def options_class() -> type:
    try:
        from lib_llmcond.engine import EncodeOptions

        return EncodeOptions
    except Exception:  # the engine's dependencies have not landed on this branch yet
        return StandInOptions


@dataclass(frozen=True)
class StandInOptions:
    """Same fields and defaults as ``lib_llmcond.engine.EncodeOptions``."""

    llm: str
    adapter: str
    emphasis: str = "Original"
    emphasis_syntax: str = "full"
    break_mode: str = "paragraphs"
    system_prompt: str | None = None
    empty_negative: str = "encode"
    chunk: bool = False
    device: str = "auto"
    llm_dtype: str = "auto"
    memory: str = "auto"
    fixed_size: bool = False
    emphasis_mapping: str = "sharpened"
    adapter_precision: str = "auto"
    adapter_loras: tuple = ()


def llm_cond(text: str, opts) -> tuple[torch.Tensor, torch.Tensor]:
    key = sorted((f.name, getattr(opts, f.name)) for f in fields(opts) if f.name not in ("memory",))
    g = torch.Generator().manual_seed(text_seed("llm", text, key))
    return torch.randn(TOKENS, 2048, generator=g), torch.randn(1280, generator=g)


@dataclass
class Call:
    texts: list
    opts: object
    width: int
    height: int
    crop_top: int
    crop_left: int
    is_negative: bool
    autocast: bool
    thread: str
    prefetch: tuple = ()


@dataclass(frozen=True)
class Count:
    tokens: int
    budget: int
    chunks: int = 1
    cut: object = None

    def describe(self) -> str:
        text = f"{self.tokens}/{self.budget}"
        if self.chunks > 1:
            text += f", {self.chunks} chunks"
        if self.cut is not None:
            text += f", cut at token {self.cut.token_index} near {self.cut.snippet!r}"
        return text


@dataclass(frozen=True)
class Cut:
    token_index: int
    word: str
    snippet: str


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() or torch.is_autocast_enabled()


class FakeEngine:
    def __init__(self, fail: Exception | None = None):
        self.calls: list[Call] = []
        self.fail = fail
        self.lock = threading.Lock()
        self.probe = torch.nn.Linear(4, 4)  # a manual-cast patch of nn.Linear would raise here
        self.loaded = False
        self.on_row = lambda index: None  # tests hook in here (e.g. press Interrupt mid-encode)

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
        progress=None,
    ):
        if self.fail is not None:
            raise self.fail
        if progress is not None:  # as the real Engine: loads once, then one check per row
            if not self.loaded:
                progress.say("loading the LLM (fake) and its tokenizer", console=True)
                self.loaded = True
            progress.say(f"encoding {len(texts)} prompt(s) with the LLM")
            for i in range(len(texts)):
                progress.check(f"before row {i + 1} of {len(texts)}")
                self.on_row(i)
        self.probe(torch.zeros(1, 4))
        with self.lock:
            self.calls.append(
                Call(
                    list(texts),
                    opts,
                    width,
                    height,
                    crop_top,
                    crop_left,
                    is_negative,
                    _autocast_on(),
                    threading.current_thread().name,
                    tuple(prefetch),
                )
            )
        crossattn, pooled = zip(*(llm_cond(t, opts) for t in texts))
        crossattn, pooled = torch.stack(crossattn), torch.stack(pooled)
        if is_negative and opts.empty_negative == "zeros" and all(t == "" for t in texts):
            crossattn, pooled = torch.zeros_like(crossattn), torch.zeros_like(pooled)
        if reports is not None:
            reports.extend(self.count_tokens(t, opts) for t in texts)
        sizes = size_part([height, width, crop_top, crop_left, height, width]).expand(len(texts), -1)
        return {"crossattn": crossattn, "vector": torch.cat([pooled, sizes], dim=1)}

    def adapter_lora_results(self, opts) -> tuple:
        """Every adapter LoRA applied, as the real engine reports a fitting one."""
        from lib_llmcond.adapters.lora import LoraResult

        return tuple(LoraResult(path, m, modules=1) for path, m in opts.adapter_loras if m != 0)

    def signature(self, opts) -> str:
        return "fake:" + repr(sorted((k, v) for k, v in asdict(opts).items() if k != "memory"))

    def count_tokens(self, text, opts, budget: int = 512) -> Count:
        n = len(text.split())
        if n > budget and opts.chunk:
            return Count(n, budget, math.ceil(n / budget))
        if n > budget:
            word = text.split()[budget]
            return Count(n, budget, 1, Cut(budget, word, " ".join(text.split()[budget - 2 : budget + 2])))
        return Count(n, budget)

    def unload(self) -> None:
        pass
