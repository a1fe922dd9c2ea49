"""What a host calls: loaded models (``registry.Registry``), LRU cache of encoded texts, SDXL conditioning dicts.

Thread-safe: one lock guards the cache, another serialises model work (one LLM forward at a time is also what
the hardware wants). Models are identified by :func:`lib_llmcond.models.identity`, so a file replaced on disk is
reloaded and never mixed with cached results of the old one. A call whose texts are all cached touches no
model (nothing is loaded or moved, the host is never asked for memory).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lib_llmcond import devices
from lib_llmcond.compat import bf16_supported
from lib_llmcond.conditioning import POOLED_DIM, make_vector, pad_blocks
from lib_llmcond.errors import IncompatibleModelsError, LlmcondError, ModelFileError
from lib_llmcond.gpu_encode import addresses
from lib_llmcond.matmul_precision import PRECISIONS, resolve_precision
from lib_llmcond.models import Identity, identity
from lib_llmcond.pipeline import DEFAULT_MAPPING, EncodedText, Pipeline, PromptReport, TextOptions
from lib_llmcond.progress import QUIET, Progress
from lib_llmcond.registry import POLICIES, HostMemory, Registry

if TYPE_CHECKING:
    from lib_llmcond.adapters.lora import LoraResult, PatchedAdapter

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
MEMORY_POLICIES = POLICIES  # ("auto", "keep", "offload", "unload"): lib_llmcond/registry.py
EMPTY_NEGATIVE = ("encode", "zeros")
REFERENCE_SIZE = 1024  # the reference workflow's fixed size conditioning
PATCHED_ADAPTERS = 2  # LoRA-patched adapter copies kept (each about the size of its adapter)
log = logging.getLogger("llmcond")


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
    memory: str = "auto"  # "auto" | "keep" | "offload" | "unload" (lib_llmcond/registry.py)
    fixed_size: bool = False  # size conditioning fixed at 1024x1024
    emphasis_mapping: str = DEFAULT_MAPPING  # one of pipeline.MAPPINGS (README: Emphasis)
    adapter_precision: str = "auto"  # "auto" | "fp32" | "tf32": fp32 matmuls on CUDA (matmul_precision)
    adapter_loras: tuple[tuple[str, float], ...] = ()  # (LoRA file, multiplier): lora_te_* patch the adapter

    def __post_init__(self) -> None:
        if self.llm_dtype not in ("auto", *DTYPES):
            raise ValueError(
                f"llm_dtype must be auto, bfloat16 or float32 (never float16), not {self.llm_dtype!r}"
            )
        if self.memory not in MEMORY_POLICIES:
            raise ValueError(f"memory must be one of {MEMORY_POLICIES}, not {self.memory!r}")
        if self.adapter_precision not in PRECISIONS:
            raise ValueError(f"adapter_precision must be one of {PRECISIONS}, not {self.adapter_precision!r}")
        if self.empty_negative not in EMPTY_NEGATIVE:
            raise ValueError(f"empty_negative must be one of {EMPTY_NEGATIVE}, not {self.empty_negative!r}")
        self.text_options()  # validates the text options
        object.__setattr__(self, "adapter_loras", tuple((str(p), float(m)) for p, m in self.adapter_loras))

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


def lora_identities(opts: EncodeOptions) -> tuple[tuple[str, float], ...]:
    """(content fingerprint, multiplier) of each adapter LoRA that does something (m != 0); a file that cannot
    be read is keyed by its path (the patch reports it and goes on without it)."""
    out = []
    for path, m in opts.adapter_loras:
        if m == 0:
            continue
        try:
            out.append((identity(path).fingerprint, m))
        except ModelFileError:
            out.append((f"unreadable:{path}", m))
    return tuple(out)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the current CUDA device (``cuda:N``) or the CPU; ``cuda:N`` beyond the device count: an error."""
    return devices.resolve(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    return DTYPES[name]


class Engine:
    """Loads models on demand, caches encoded texts, returns host-shaped conditioning.

    ``host`` is asked for VRAM when a load or a move onto the GPU needs it (``registry.HostMemory``).
    ``pack_when_idle``: after each request, CPU models re-lay their weights for oneDNN in the background
    (``cpu_linear.IdlePacker``); a one-shot caller (the command line) passes False and never pays for it.
    ``map_adapters``: a CPU adapter's fp32 tensors stay mapped from its file instead of being copied (for a
    process that exits after its prompts; a long-lived one copies them, so the file stays replaceable)."""

    def __init__(
        self,
        cache_size: int = 64,
        *,
        host: HostMemory | None = None,
        pack_when_idle: bool = True,
        map_adapters: bool = False,
    ) -> None:
        self.cache_size = cache_size
        self.pack_when_idle = pack_when_idle
        self.map_adapters = map_adapters
        self._lock = threading.RLock()  # cache + tokenizers
        self._work = threading.RLock()  # model loading, placement and forward passes
        self._models = Registry(host)
        self._packers: weakref.WeakSet = weakref.WeakSet()  # packers of loaded CPU models (for wait_packed)
        self._tokenizers: dict[tuple, object] = {}
        self._cache: OrderedDict[tuple, EncodedText] = OrderedDict()
        self._patched: OrderedDict[tuple, PatchedAdapter] = OrderedDict()  # adapters with LoRAs merged
        self._patched_at: dict[tuple, tuple] = {}  # where each patched copy's base weights were

    # -- registry ----------------------------------------------------------------------------------
    def _acquire(
        self, opts: EncodeOptions, ids: tuple[Identity, Identity], progress: Progress = QUIET
    ) -> tuple[Pipeline, list[tuple]]:
        """The pipeline and the registry keys of its models (loading and placing them); ``ids``: the LLM's
        and the adapter's identities (:meth:`_identities`)."""
        device = resolve_device(opts.device)
        dtype = resolve_dtype(opts.llm_dtype, device)
        llm_id, adapter_id = ids
        keys = [("adapter", adapter_id, str(device)), ("llm", llm_id, dtype, str(device))]
        with self._work:
            try:
                adapter, llm = self._place(opts, keys, device, dtype, progress)
            except BaseException:  # a failed call leaves nothing on the device beyond its policy
                self._models.release(keys, opts.memory)
                raise
        if llm.hidden_size != adapter.llm_dim:
            self._models.release(keys, opts.memory)
            raise IncompatibleModelsError(
                f"the adapter expects LLM hidden states of width {adapter.llm_dim}, but "
                f"{Path(opts.llm).name} produces {llm.hidden_size}",
                path=opts.adapter,
                fix="choose the adapter trained for this LLM (the info line lists compatible pairs)",
            )
        adapter, _ = self._with_loras(adapter, adapter_id, device, opts)
        precision = resolve_precision(opts.adapter_precision, device)
        return Pipeline(llm, adapter, precision), keys

    # -- adapter LoRAs (adapters/lora.py) ----------------------------------------------------------------
    def _with_loras(
        self, base: torch.nn.Module, adapter_id: Identity, device: torch.device, opts: EncodeOptions
    ) -> tuple[torch.nn.Module, tuple]:
        """``base`` with ``opts.adapter_loras`` merged (a patched copy, kept in a small LRU) and the LoRAs'
        identity key (empty without LoRAs: the same cache entries as before)."""
        from lib_llmcond.adapters.lora import patch_adapter

        lora_key = lora_identities(opts)
        if not lora_key:
            return base, ()
        key = (adapter_id, str(device), lora_key)
        where = addresses(base)  # the copy shares the base's tensors: a base moved since means a new copy
        with self._lock:
            patched = self._patched.get(key)
            if patched is not None:
                self._patched.move_to_end(key)
        if patched is None or self._patched_at.get(key) != where:
            patched = patch_adapter(base, [(p, m) for p, m in opts.adapter_loras if m != 0])
            for r in patched.results:
                if r.error:
                    log.warning("llmcond: %s", r.describe())
            with self._lock:
                self._patched[key] = patched
                self._patched_at[key] = where
                while len(self._patched) > PATCHED_ADAPTERS:
                    self._patched_at.pop(self._patched.popitem(last=False)[0], None)
        return patched.adapter, lora_key

    def adapter_lora_results(self, opts: EncodeOptions) -> tuple[LoraResult, ...]:
        """What became of each of ``opts.adapter_loras`` in the last encode with these options (empty when
        none was merged yet)."""
        key = (identity(opts.adapter), str(resolve_device(opts.device)), lora_identities(opts))
        with self._lock:
            patched = self._patched.get(key)
        return patched.results if patched is not None else ()

    def _place(
        self,
        opts: EncodeOptions,
        keys: list[tuple],
        device: torch.device,
        dtype: torch.dtype,
        progress: Progress = QUIET,
    ):
        """(adapter, llm) on ``device``: loaded on the CPU if missing (packed only to compute there)."""
        from lib_llmcond.adapters.loader import load_adapter
        from lib_llmcond.cpu_linear import defer_packing
        from lib_llmcond.encoders.llm import load_llm

        def loading(what: str, load):  # the slow first use says what it does (progress text and console)
            def run():
                progress.say(f"loading the {what}", console=True)
                return load()

            return run

        adapter_key, llm_key = keys
        adapter_id, llm_id = adapter_key[1], llm_key[1]
        pack = device.type == "cpu"

        def load_cpu_adapter():
            adapter = load_adapter(Path(adapter_id.path), device="cpu", pack=pack, mapped=self.map_adapters)
            if pack:  # packed between requests, like the LLM, not in front of the first one
                adapter.idle_packer = defer_packing(adapter)
            return adapter

        common = dict(device=device, policy=opts.memory)
        adapter = self._models.acquire(
            adapter_key,
            adapter_id.path,
            loading(f"adapter {Path(adapter_id.path).name}", load_cpu_adapter),
            version=adapter_id,
            module_of=lambda a: a,
            in_use=[llm_key],
            **common,
        )
        llm = self._models.acquire(
            llm_key,
            llm_id.path,
            loading(
                f"LLM {Path(llm_id.path).name} and its tokenizer",
                lambda: load_llm(Path(llm_id.path), dtype=dtype, device="cpu", pack=pack),
            ),
            version=llm_id,
            module_of=lambda m: m.model,
            in_use=[adapter_key],
            on_move=lambda m, d: m.to_device(d),
            **common,
        )
        return adapter, llm

    def pipeline(self, opts: EncodeOptions, progress: Progress = QUIET) -> tuple[Pipeline, tuple]:
        """The pipeline for ``opts`` and the identity key of its models (loads what is missing)."""
        ids = self._identities(opts)
        pipe, _ = self._acquire(opts, ids, progress)
        return pipe, self._model_key(opts, ids)

    @staticmethod
    def _identities(opts: EncodeOptions) -> tuple[Identity, Identity]:
        """The LLM's and the adapter's identities, looked up once per request (each stats the model files)."""
        return identity(opts.llm), identity(opts.adapter)

    def _model_key(self, opts: EncodeOptions, ids: tuple[Identity, Identity]) -> tuple:
        """The cache key of ``opts``' models (``ids``: :meth:`_identities`) without loading them."""
        device = resolve_device(opts.device)
        dtype = resolve_dtype(opts.llm_dtype, device)
        precision = resolve_precision(opts.adapter_precision, device)
        fingerprints = tuple(i.fingerprint for i in ids)
        return (*fingerprints, str(dtype), str(device), precision, lora_identities(opts))

    # -- CPU packing between requests (cpu_linear.IdlePacker) ----------------------------------------------
    def _pack_after(self, pipe: Pipeline) -> None:
        """After a CPU request: let the call's LLM and adapter re-lay their weights in the background."""
        if not self.pack_when_idle or pipe.llm.device.type != "cpu":
            return
        for packer in (pipe.llm.packer, pipe.adapter.idle_packer):
            if packer is not None:
                self._packers.add(packer)
                packer.start()

    def wait_packed(self, timeout: float | None = None) -> bool:
        """Wait for the background packing of the loaded models (benchmarks measure the steady state)."""
        return all([p.wait(timeout) for p in list(self._packers)])

    # -- encoding ----------------------------------------------------------------------------------
    def encode_texts(
        self, texts: Sequence[str], opts: EncodeOptions, progress: Progress = QUIET
    ) -> list[EncodedText]:
        """Encoded texts in order, from the cache where possible; the misses run as one batch. ``progress`` hears
        what is loaded and encoded, and may stop the encode between rows (:class:`lib_llmcond.progress.Interrupted`)."""
        with self._work:
            ids = self._identities(opts)
            model_key = self._model_key(opts, ids)
            topts = opts.text_options()
            keys = [(model_key, topts, t) for t in texts]
            with self._lock:
                found = {k: self._cache[k] for k in keys if k in self._cache}
                for k in found:
                    self._cache.move_to_end(k)
            missing = list(dict.fromkeys(k for k in keys if k not in found))
            if missing:
                used: list[tuple] = []
                try:
                    pipe, used = self._acquire(opts, ids, progress)
                    progress.say(f"encoding {len(missing)} prompt(s) with the LLM")
                    with _held_off(pipe.adapter.idle_packer):
                        fresh = pipe.encode([k[2] for k in missing], topts, progress)
                    self._pack_after(pipe)
                except torch.cuda.OutOfMemoryError as e:
                    self.unload()
                    raise LlmcondError(
                        "out of GPU memory while encoding the prompt",
                        fix="set llmcond's memory policy to offload/unload or choose the cpu device",
                    ) from e
                finally:
                    self._models.release(used, opts.memory)
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
        progress: Progress = QUIET,
    ) -> dict[str, torch.Tensor]:
        """``{"crossattn": [N, T, 2048], "vector": [N, 2816]}`` for ``texts`` (fp32, on the encode device).

        ``prefetch`` texts (e.g. the negative prompts of the same step) are encoded in the same batch and cached.
        """
        texts = list(texts)
        zero = is_negative and opts.empty_negative == "zeros" and all(t == "" for t in texts)
        encoded = self.encode_texts(texts + [p for p in prefetch if p not in texts], opts, progress)[
            : len(texts)
        ]
        if reports is not None:
            reports.extend(e.report for e in encoded)
        rows = [e.crossattn for e in encoded]
        if len({r.shape[0] for r in rows}) > 1:  # pad shorter rows with the empty prompt's block
            crossattn = pad_blocks(rows, self.encode_texts([""], opts, progress)[0].crossattn)
        else:
            crossattn = torch.stack(rows)
        pooled = torch.stack([e.pooled for e in encoded])
        if zero:
            crossattn, pooled = torch.zeros_like(crossattn), pooled.new_zeros(len(texts), POOLED_DIM)
        h, w = (REFERENCE_SIZE, REFERENCE_SIZE) if opts.fixed_size else (height, width)
        vector = make_vector(pooled, height=h, width=w, crop_top=crop_top, crop_left=crop_left)
        return {"crossattn": crossattn, "vector": vector}

    # -- helpers for the UI ------------------------------------------------------------------------
    def signature(self, opts: EncodeOptions) -> str:
        """A stable string naming the models' identities and every option: part of the host's cond-cache key."""
        llm_id, adapter_id = identity(opts.llm), identity(opts.adapter)
        skip = ("llm", "adapter", "memory", "adapter_loras")
        fields = {k: v for k, v in asdict(opts).items() if k not in skip}
        active = lora_identities(opts)
        loras = f":{list(active)}" if active else ""
        return f"llmcond:{llm_id.short_hash}:{adapter_id.short_hash}:{sorted(fields.items())}{loras}"

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
        """Free every model and the cache of encoded texts."""
        for packer in list(self._packers):  # a packing thread must not hold a model being freed
            packer.stop()
        with self._work:
            self._models.clear()
        with self._lock:
            self._patched.clear()
            self._patched_at.clear()
            self._cache.clear()


def _held_off(packer) -> contextlib.AbstractContextManager:
    """While a request runs, the adapter's background packer waits (it never re-lays a layer in use)."""
    return packer.forward() if packer is not None else contextlib.nullcontext()
