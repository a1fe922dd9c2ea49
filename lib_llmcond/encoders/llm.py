"""An LLM ready to encode: transformer + tokenizer + the family's text path; loaded from a directory or GGUF."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lib_llmcond.cpu_linear import IdlePacker, pack_linears
from lib_llmcond.encoders import transformer
from lib_llmcond.encoders.config import TransformerConfig
from lib_llmcond.encoders.lean_check import choose_lean_form
from lib_llmcond.encoders.transformer import fuse_projections
from lib_llmcond.errors import ModelFileError
from lib_llmcond.gpu_encode import GraphRunner
from lib_llmcond.heap import release_after_forward, release_free_memory
from lib_llmcond.text.paths import TextPath, TokenBatch, text_path
from lib_llmcond.text.tokenizer import Tokenizer, load_tokenizer


@dataclass
class LLM:
    path: Path
    config: TransformerConfig
    model: torch.nn.Module
    tokenizer: Tokenizer
    dtype: torch.dtype
    device: torch.device
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _prefixes: OrderedDict = field(default_factory=OrderedDict, repr=False)  # ids -> PrefixState
    graphs: GraphRunner = field(default_factory=GraphRunner, repr=False)  # the accelerator path's graphs
    packer: IdlePacker | None = field(default=None, repr=False)  # CPU: packs the linears between requests
    # (device, dtype) -> the lean maths' attention form there, None where it disagreed (check_lean)
    _lean_forms: dict = field(default_factory=dict, repr=False)

    @property
    def family(self) -> str:
        return self.config.family

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def text_path_for(self, system_prompt: str | None) -> TextPath:
        return text_path(self.family, system_prompt)

    def to_device(self, device: torch.device) -> None:
        with self._lock:
            if self.device != device:
                if self.packer is not None:
                    self.packer.stop()  # never move a layer while it is being packed
                self.model.to(device)
                self.device = device
                self._prefixes.clear()
                self.graphs.clear()
            self.check_lean()

    def check_lean(self) -> None:
        """Off the CPU, once per device and dtype: whether the lean layer maths agrees with the op-by-op maths
        there, and with which attention form (:mod:`lean_check`); where no form agrees, the model keeps the
        op-by-op maths on that device."""
        if not transformer.on_accelerator(self.device):
            return
        key = (str(self.device), self.dtype)
        if key not in self._lean_forms:
            self._lean_forms[key] = choose_lean_form(self.model, self.device, self.dtype)
        form = self._lean_forms[key]
        self.model.lean = form is not None
        if form is not None:
            self.model.use_attention(form)

    def usable_prefix(self, batch: TokenBatch) -> int:
        """How many leading tokens of ``batch`` run once per LLM as a cached prefix (0 = none)."""
        p = batch.shared_prefix if self.config.causal else 0
        return p if MIN_PREFIX <= p < batch.input_ids.shape[1] else 0

    def prefix_state_for(self, prefix: tuple[int, ...]):
        """The cached state after ``prefix`` (computed on first use), None for no prefix."""
        if not prefix:
            return None
        return self._prefix_state(prefix, None)

    @torch.inference_mode()
    def hidden_states_static(
        self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, prefix: tuple[int, ...]
    ) -> torch.Tensor:
        """Hidden states of device tensors that follow the cached ``prefix`` (shapes fixed by the caller; no
        host sync, so a CUDA graph can hold it)."""
        with _autocast_off(ids.device):
            state = self.prefix_state_for(prefix)
            return self.model(ids, mask, pos, prefix=state)

    @torch.inference_mode()
    def hidden_states(self, batch: TokenBatch) -> torch.Tensor:
        """Last hidden states [B, L, hidden] after the final norm, in the compute dtype.

        The leading tokens every row shares (``batch.shared_prefix``: the chat template's system part) run
        once per LLM and are reused; the result is the same as running them with each prompt."""
        d = self.device
        ids, mask, pos = (t.to(d) for t in (batch.input_ids, batch.attention_mask, batch.position_ids))
        p = self.usable_prefix(batch)
        gate = self.packer.forward() if self.packer is not None else contextlib.nullcontext()
        with gate, _autocast_off(d):
            if not p:
                hidden = self.model(ids, mask, pos)
            else:
                state = self._prefix_state(tuple(batch.input_ids[0, :p].tolist()), ids[:1, :p])
                rest = self.model(ids[:, p:], mask[:, p:], pos[:, p:], prefix=state)
                hidden = torch.cat([state.hidden.expand(ids.shape[0], -1, -1), rest], dim=1)
        release_after_forward(d, ids.numel())  # the activations just freed
        return hidden

    def pack_when_idle(self) -> bool:
        """On the CPU, start packing the linears in the background (call it after a request); True while a
        packer runs. The first prompts after a load run on the dense weights instead of waiting for it."""
        if self.packer is None or self.device.type != "cpu":
            return False
        return self.packer.start()

    def wait_packed(self, timeout: float | None = None) -> bool:
        """Wait for a running packer; True when every linear is packed (or nothing can be)."""
        return self.packer is None or self.packer.wait(timeout)

    def _prefix_state(self, key: tuple[int, ...], ids: torch.Tensor | None):
        """``key``: the prefix ids as read on the CPU (no device sync); ``ids`` the same on the device, or
        None to build them when the state is not cached yet."""
        state = self._prefixes.get(key)
        if state is None:
            if ids is None:
                ids = torch.tensor([key], dtype=torch.long).to(self.device)
            state = self.model.prefix_state(ids)
            self._prefixes[key] = state
            while len(self._prefixes) > PREFIX_CACHE_SIZE:
                self._prefixes.popitem(last=False)
        self._prefixes.move_to_end(key)
        return state


MIN_PREFIX = 4  # shorter shared prefixes are not worth a cache entry
PREFIX_CACHE_SIZE = 8  # system prompts kept per LLM (a few KB to a few MB each)


def _autocast_off(device: torch.device):
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):
        import contextlib

        return contextlib.nullcontext()


def is_gguf(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".gguf"


def load_llm(
    path: str | Path, *, dtype: torch.dtype, device: str | torch.device = "cpu", pack: bool = True
) -> LLM:
    """An HF model directory or a ``.gguf`` file; the family comes from config.json or GGUF metadata. On the CPU
    its linears are packed for oneDNN unless ``pack`` is False (a model loaded there to be moved elsewhere)."""
    path = Path(path)
    device = torch.device(device)
    if dtype == torch.float16:
        raise ValueError("float16 is never used for these LLMs (Gemma overflows); use bfloat16 or float32")
    if is_gguf(path):
        load_gguf_transformer, load_gguf_tokenizer = _gguf_support(path)
        cfg, model = load_gguf_transformer(path, dtype=dtype, device=device)
        tokenizer = load_gguf_tokenizer(path)
    elif path.is_dir():
        from lib_llmcond.encoders.lora import find_lora, merge_lora
        from lib_llmcond.encoders.weights import load_transformer

        tokenizer = load_tokenizer(path)  # fail early, before reading gigabytes
        cfg, model = load_transformer(path, dtype=dtype, device=device)
        lora = find_lora(path)
        if lora is not None:
            merge_lora(model, lora)
    else:
        raise ModelFileError(
            "not an LLM: expected an HF model folder or a .gguf file",
            path=path,
            fix="choose a folder with config.json and weights, or a .gguf file",
        )
    packer = None
    if pack and device.type == "cpu":
        if pack_linears(model, at_first_forward=False):
            packer = IdlePacker(model)  # packs when asked (pack_when_idle), never in front of a prompt
    else:
        fuse_projections(model)
    release_free_memory()  # what the load's temporaries (and a model dropped before it) left in the heap
    llm = LLM(path, cfg, model, tokenizer, dtype, device, packer=packer)
    llm.check_lean()
    return llm


def _gguf_support(path: Path):
    try:
        from lib_llmcond.encoders.gguf.loader import load_gguf_transformer
        from lib_llmcond.text.gguf_tokenizer import load_gguf_tokenizer
    except ImportError as e:
        raise ModelFileError(
            f"GGUF models cannot be read here ({e})",
            path=path,
            fix="install the 'gguf' package (the extension's install.py adds it) or use the HF model folder",
        ) from e
    return load_gguf_transformer, load_gguf_tokenizer


@functools.lru_cache(maxsize=16)
def _family_of_dir(path: Path) -> str:
    from lib_llmcond.encoders.weights import read_config

    return read_config(path)[1].family


def load_llm_tokenizer(path: str | Path) -> tuple[Tokenizer, str]:
    """The tokenizer and family of an LLM without loading its weights (for token counting)."""
    path = Path(path)
    if is_gguf(path):
        _, load_gguf_tokenizer = _gguf_support(path)
        from lib_llmcond.encoders.gguf.reader import gguf_family

        return load_gguf_tokenizer(path), gguf_family(path)
    return load_tokenizer(path), _family_of_dir(path)
