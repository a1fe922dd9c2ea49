"""What a host calls: loaded-model registry, LRU cache of encoded texts, SDXL conditioning dicts.

Thread-safe: one lock guards the registry and the cache, another serialises model work (one LLM forward at a
time is also what the hardware wants). Models are identified by :func:`lib_llmcond.models.identity`, so a file
replaced on disk is reloaded and never mixed with cached results of the old one.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lib_llmcond.compat import bf16_supported
from lib_llmcond.conditioning import POOLED_DIM, make_vector, pad_blocks
from lib_llmcond.errors import IncompatibleModelsError, LlmcondError
from lib_llmcond.models import Identity, identity
from lib_llmcond.pipeline import EncodedText, Pipeline, PromptReport, TextOptions

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
MEMORY_POLICIES = ("keep", "offload", "unload")
EMPTY_NEGATIVE = ("encode", "zeros")
REFERENCE_SIZE = 1024  # the reference workflow's fixed size conditioning


@dataclass(frozen=True)
class EncodeOptions:
    """One request's choices. Paths are already resolved by the caller."""

    llm: str
    adapter: str
    emphasis: str = "Original"  # "None" | "Ignore" | "Original" | "No norm"
    emphasis_syntax: str = "full"  # "full" | "weights_only"
    break_mode: str = "paragraphs"  # "paragraphs" | "blocks"
    system_prompt: str | None = None  # None: the reference's system prompt
    empty_negative: str = "encode"  # "encode" (reference) | "zeros" (hosts)
    chunk: bool = False
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    llm_dtype: str = "auto"  # "auto" | "bfloat16" | "float32"
    memory: str = "offload"  # "keep" | "offload" | "unload"
    fixed_size: bool = False  # size conditioning fixed at 1024x1024
    emphasis_mapping: str = "argmax"  # "argmax" | "attention" (README: Emphasis)

    def __post_init__(self) -> None:
        if self.llm_dtype not in ("auto", *DTYPES):
            raise ValueError(
                f"llm_dtype must be auto, bfloat16 or float32 (never float16), not {self.llm_dtype!r}"
            )
        if self.memory not in MEMORY_POLICIES:
            raise ValueError(f"memory must be one of {MEMORY_POLICIES}, not {self.memory!r}")
        if self.empty_negative not in EMPTY_NEGATIVE:
            raise ValueError(f"empty_negative must be one of {EMPTY_NEGATIVE}, not {self.empty_negative!r}")
        self.text_options()  # validates the text options

    def text_options(self) -> TextOptions:
        return TextOptions(
            emphasis=self.emphasis,
            emphasis_syntax=self.emphasis_syntax,
            break_mode=self.break_mode,
            system_prompt=self.system_prompt,
            chunk=self.chunk,
            mapping=self.emphasis_mapping,
        )


@dataclass(frozen=True)
class TokenCount:
    tokens: int
    budget: int
    chunks: int = 1
    cut: object | None = None

    def describe(self) -> str:
        return PromptReport(self.tokens, self.budget, self.cut, self.chunks).describe()  # type: ignore[arg-type]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LlmcondError(
            "the device 'cuda' was chosen but this torch has no CUDA device", fix="choose cpu or auto"
        )
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    return DTYPES[name]


class Engine:
    """Loads models on demand, caches encoded texts, returns host-shaped conditioning."""

    def __init__(self, cache_size: int = 64, *, pack_when_idle: bool = True) -> None:
        """``pack_when_idle``: after each request, CPU models re-lay their weights for oneDNN in the background
        (``cpu_linear.IdlePacker``); a one-shot caller (the command line) passes False and never pays for it."""
        self.cache_size = cache_size
        self.pack_when_idle = pack_when_idle
        self._lock = threading.RLock()  # registry + cache
        self._work = threading.RLock()  # model loading and forward passes
        self._llms: dict[tuple, object] = {}
        self._adapters: dict[tuple, torch.nn.Module] = {}
        self._adapter_packers: dict[int, object] = {}  # id(adapter) -> IdlePacker (CPU adapters)
        self._tokenizers: dict[tuple, object] = {}
        self._cache: OrderedDict[tuple, EncodedText] = OrderedDict()

    # -- registry ----------------------------------------------------------------------------------
    def _llm(self, ident: Identity, dtype: torch.dtype, device: torch.device):
        from lib_llmcond.encoders.llm import load_llm

        key = (ident, dtype, device.type)
        with self._lock:
            llm = self._llms.get(key)
        if llm is None:
            with self._lock:  # drop stale versions of the same path (file replaced on disk)
                for k in [k for k in self._llms if k[0].path == ident.path]:
                    del self._llms[k]
            llm = load_llm(Path(ident.path), dtype=dtype, device=device)
            with self._lock:
                self._llms[key] = llm
        llm.to_device(device)
        return llm

    def _adapter(self, ident: Identity, device: torch.device) -> torch.nn.Module:
        from lib_llmcond.adapters.loader import load_adapter

        key = (ident, device.type)
        with self._lock:
            adapter = self._adapters.get(key)
        if adapter is None:
            with self._lock:
                for k in [k for k in self._adapters if k[0].path == ident.path]:
                    del self._adapters[k]
            from lib_llmcond.cpu_linear import defer_packing

            adapter = load_adapter(Path(ident.path), device=device)
            packer = defer_packing(adapter)  # packed between requests, like the LLM, not in the first one
            with self._lock:
                self._adapters[key] = adapter
                self._adapter_packers = {
                    id(a): p for a in self._adapters.values() if (p := self._adapter_packers.get(id(a)))
                }
                if packer is not None:
                    self._adapter_packers[id(adapter)] = packer
        return adapter

    def pipeline(self, opts: EncodeOptions) -> tuple[Pipeline, tuple]:
        """The pipeline for ``opts`` and the identity key of its models (loads what is missing)."""
        device = resolve_device(opts.device)
        dtype = resolve_dtype(opts.llm_dtype, device)
        llm_id, adapter_id = identity(opts.llm), identity(opts.adapter)
        adapter = self._adapter(adapter_id, device)
        llm = self._llm(llm_id, dtype, device)
        if llm.hidden_size != adapter.llm_dim:
            raise IncompatibleModelsError(
                f"the adapter expects LLM hidden states of width {adapter.llm_dim}, but "
                f"{Path(opts.llm).name} produces {llm.hidden_size}",
                path=opts.adapter,
                fix="choose the adapter trained for this LLM (the info line lists compatible pairs)",
            )
        return Pipeline(llm, adapter), (llm_id.fingerprint, adapter_id.fingerprint, str(dtype), device.type)

    def _after_use(self, opts: EncodeOptions) -> None:
        with self._lock:
            if opts.memory == "unload":
                self._llms.clear()
            elif opts.memory == "offload":
                for llm in self._llms.values():
                    llm.to_device(torch.device("cpu"))
            if self.pack_when_idle and resolve_device(opts.device).type == "cpu":
                for llm in self._llms.values():
                    llm.pack_when_idle()
                for packer in self._adapter_packers.values():
                    packer.start()

    def _adapter_forward(self, adapter: torch.nn.Module):
        """Holds the adapter's packer off while a request runs."""
        with self._lock:
            packer = self._adapter_packers.get(id(adapter))
        return packer.forward() if packer is not None else contextlib.nullcontext()

    def wait_packed(self, timeout: float | None = None) -> bool:
        """Wait for the background packing of the loaded models (benchmarks measure the steady state)."""
        with self._lock:
            llms, packers = list(self._llms.values()), list(self._adapter_packers.values())
        return all([llm.wait_packed(timeout) for llm in llms] + [p.wait(timeout) for p in packers])

    # -- encoding ----------------------------------------------------------------------------------
    def encode_texts(self, texts: Sequence[str], opts: EncodeOptions) -> list[EncodedText]:
        """Encoded texts in order, from the cache where possible; the misses run as one batch."""
        with self._work:
            pipe, model_key = self.pipeline(opts)
            topts = opts.text_options()
            keys = [(model_key, topts, t) for t in texts]
            with self._lock:
                found = {k: self._cache[k] for k in keys if k in self._cache}
                for k in found:
                    self._cache.move_to_end(k)
            missing = list(dict.fromkeys(k for k in keys if k not in found))
            if missing:
                try:
                    with self._adapter_forward(pipe.adapter):
                        fresh = pipe.encode([k[2] for k in missing], topts)
                except torch.cuda.OutOfMemoryError as e:
                    self.unload()
                    raise LlmcondError(
                        "out of GPU memory while encoding the prompt",
                        fix="set llmcond's memory policy to offload/unload or choose the cpu device",
                    ) from e
                finally:
                    self._after_use(opts)
                with self._lock:
                    for k, enc in zip(missing, fresh):
                        found[k] = enc
                        self._cache[k] = enc
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
            return [found[k] for k in keys]

    def get_conditioning(
        self,
        texts: Sequence[str],
        opts: EncodeOptions,
        *,
        width: int,
        height: int,
        crop_top: int = 0,
        crop_left: int = 0,
        is_negative: bool = False,
        reports: list | None = None,
        prefetch: Sequence[str] = (),
    ) -> dict[str, torch.Tensor]:
        """``{"crossattn": [N, T, 2048], "vector": [N, 2816]}`` for ``texts`` (fp32, CPU).

        ``prefetch`` texts (e.g. the negative prompts of the same step) are encoded in the same batch and cached.
        """
        texts = list(texts)
        zero = is_negative and opts.empty_negative == "zeros" and all(t == "" for t in texts)
        encoded = self.encode_texts(texts + [p for p in prefetch if p not in texts], opts)[: len(texts)]
        if reports is not None:
            reports.extend(e.report for e in encoded)
        rows = [e.crossattn for e in encoded]
        if len({r.shape[0] for r in rows}) > 1:  # pad shorter rows with the empty prompt's block
            crossattn = pad_blocks(rows, self.encode_texts([""], opts)[0].crossattn)
        else:
            crossattn = torch.stack(rows)
        pooled = torch.stack([e.pooled for e in encoded])
        if zero:
            crossattn, pooled = torch.zeros_like(crossattn), torch.zeros(len(texts), POOLED_DIM)
        h, w = (REFERENCE_SIZE, REFERENCE_SIZE) if opts.fixed_size else (height, width)
        vector = make_vector(pooled, height=h, width=w, crop_top=crop_top, crop_left=crop_left)
        return {"crossattn": crossattn, "vector": vector}

    # -- helpers for the UI ------------------------------------------------------------------------
    def signature(self, opts: EncodeOptions) -> str:
        """A stable string naming the models' identities and every option: part of the host's cond-cache key."""
        llm_id, adapter_id = identity(opts.llm), identity(opts.adapter)
        fields = {k: v for k, v in asdict(opts).items() if k not in ("llm", "adapter", "memory")}
        return f"llmcond:{llm_id.short_hash}:{adapter_id.short_hash}:{sorted(fields.items())}"

    def _tokenizer_and_family(self, llm_path: str):
        from lib_llmcond.encoders.llm import load_llm_tokenizer

        ident = identity(llm_path)
        with self._lock:
            tok = self._tokenizers.get((ident,))
        if tok is None:
            tok = load_llm_tokenizer(Path(llm_path))
            with self._lock:
                self._tokenizers[(ident,)] = tok
        return tok

    def count_tokens(self, text: str, opts: EncodeOptions, budget: int = 512) -> TokenCount:
        """Tokens of ``text`` that would reach the adapter, without loading the LLM's weights."""
        from lib_llmcond.pipeline import adapter_token_counter
        from lib_llmcond.prompt.chunks import cut_report, split_for_budget
        from lib_llmcond.prompt.emphasis import parse_prompt
        from lib_llmcond.text.paths import text_path

        tok, family = self._tokenizer_and_family(opts.llm)
        path = text_path(family, opts.system_prompt)
        topts = opts.text_options()
        parsed = None if topts.emphasis == "None" else parse_prompt(text, syntax=topts.emphasis_syntax)
        clean = text if parsed is None else parsed.text
        row = path.tokenize(clean, tok)
        n = row.adapter_end - row.adapter_start
        chunks, cut = 1, None
        if n > budget and topts.chunk:
            count = adapter_token_counter(path, tok)
            chunks = len(split_for_budget(clean, [] if parsed is None else parsed.spans, count, budget))
        elif n > budget:
            cut = cut_report(clean, row.offsets[row.adapter_start : row.adapter_end], budget)
        return TokenCount(tokens=n, budget=budget, chunks=chunks, cut=cut)

    def unload(self) -> None:
        with self._lock:
            self._llms.clear()
            self._adapters.clear()
            self._adapter_packers.clear()
            self._cache.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
