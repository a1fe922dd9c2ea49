"""The accelerator path: every shape decided on the CPU from token counts, then one replayable LLM + adapter run.

On a GPU an encode of a short prompt is bound by kernel launches and host syncs, not by arithmetic. So:

- :func:`plan` lays a batch out with shapes fixed by buckets (counted after the cached chat-template prefix),
  stops causal LLMs at the last token the adapter reads, and computes on the CPU where each adapter input comes
  from (a gather index) and at which input position it sits: no ``.tolist()``, ``bool()`` or data-dependent
  shape on the device.
- :class:`GraphRunner` runs LLM -> gather -> adapter for one plan, captured as a CUDA graph per
  (batch size, buckets, options) on first use and replayed after; eager where capture fails or torch lacks it.
  A graph reads the weights at the addresses they had at capture, so each call checks that the models still
  sit there (they move with the memory policy) and captures again when not.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from lib_llmcond.adapters.base import AdapterOutput
from lib_llmcond.placement import token as placement_token
from lib_llmcond.text.paths import TokenBatch

log = logging.getLogger("llmcond")

BUCKETS = (64, 128, 256, 512)
GRAPHS_PER_LLM = 16  # captured graphs kept per LLM (each holds its static inputs; activations share a pool)


def bucket(n: int) -> int:
    """The smallest bucket holding ``n`` (multiples of 512 beyond the largest)."""
    return next((b for b in BUCKETS if b >= n), -(-n // 512) * 512)


@dataclass(frozen=True)
class StaticPlan:
    """CPU tensors with bucketed shapes for one batch, and the facts the run needs."""

    input_ids: torch.Tensor  # [B, Lb] the tokens after the shared prefix, right padded
    attention_mask: torch.Tensor  # [B, Lb] 1 = real token
    position_ids: torch.Tensor  # [B, Lb]
    prefix: tuple[int, ...]  # shared prefix token ids run once per LLM (causal models), () = none
    gather: torch.Tensor  # [B, n] index into the flattened LLM output [B * Lb]
    positions: torch.Tensor  # [B, n] adapter input position of each slot
    keep: torch.Tensor  # [B, n] bool, True = a real adapter input
    slots: list[int]  # real adapter inputs per row

    @property
    def key(self) -> tuple:
        return (*self.input_ids.shape, self.gather.shape[1], self.prefix)


def plan(batch: TokenBatch, budget: int, causal: bool, prefix_len: int) -> StaticPlan | None:
    """The bucketed layout of ``batch`` for an adapter reading at most ``budget`` inputs, with the first
    ``prefix_len`` tokens (shared by every row, read by no adapter) run once per LLM; None when a row has no
    adapter input at all (the eager path handles that corner)."""
    rows = batch.rows
    pads = batch.adapter_left_pad or [0] * len(rows)
    starts = [sl.start for sl in batch.adapter_slices]
    slots = [max(0, min(sl.stop - sl.start, budget - pad)) for sl, pad in zip(batch.adapter_slices, pads)]
    if min(slots) == 0:
        return None
    real = batch.attention_mask.sum(dim=1).tolist()  # CPU tensor: no device sync
    # causal models never need tokens after the last one the adapter reads; others see the whole row
    stops = [s + k for s, k in zip(starts, slots)] if causal else [int(r) for r in real]
    width = bucket(max(stops) - prefix_len)
    b = len(rows)
    ids = torch.full((b, width), int(batch.input_ids[0, -1]), dtype=torch.long)
    mask = torch.zeros(b, width, dtype=torch.long)
    pos = torch.zeros(b, width, dtype=torch.long)
    for i, stop in enumerate(stops):
        n = stop - prefix_len
        ids[i, :n] = batch.input_ids[i, prefix_len:stop]
        mask[i, :n] = batch.attention_mask[i, prefix_len:stop]
        pos[i, :n] = batch.position_ids[i, prefix_len:stop]
        if n < width:  # padding continues the positions (never read; keeps rope tables in range)
            pos[i, n:] = pos[i, n - 1] + torch.arange(1, width - n + 1) if n else torch.arange(width - n)
    slots_width = bucket(max(slots))
    gather = torch.zeros(b, slots_width, dtype=torch.long)
    positions = torch.zeros(b, slots_width, dtype=torch.long)
    keep = torch.zeros(b, slots_width, dtype=torch.bool)
    for i, (start, k, pad) in enumerate(zip(starts, slots, pads)):
        first = i * width + (start - prefix_len)
        gather[i] = first  # padded slots repeat the row's first input: they are never keys, so never read
        gather[i, :k] += torch.arange(k)
        positions[i, :k] = pad + torch.arange(k)
        keep[i, :k] = True
    prefix = tuple(batch.input_ids[0, :prefix_len].tolist())
    return StaticPlan(ids, mask, pos, prefix, gather, positions, keep, slots)


def gather_inputs(hidden: torch.Tensor, gather: torch.Tensor) -> torch.Tensor:
    """Adapter inputs [B, n, H] (fp32) from the LLM output [B, Lb, H] by a flat index."""
    return hidden.reshape(-1, hidden.shape[-1])[gather].float()


# the names ``forward`` reads -> the plan's fields, in the order they are packed
PACKED = {
    "ids": "input_ids",
    "mask": "attention_mask",
    "pos": "position_ids",
    "gather": "gather",
    "positions": "positions",
    "keep": "keep",
}


def pack(p: StaticPlan) -> torch.Tensor:
    """The plan's six tensors as one flat int64 tensor: one host-to-device copy per encode."""
    return torch.cat([getattr(p, f).reshape(-1).long() for f in PACKED.values()])


def unpack(flat: torch.Tensor, p: StaticPlan) -> dict[str, torch.Tensor]:
    """Views of ``flat`` (on any device) shaped as ``p``'s tensors; ``keep`` as bool."""
    out, at = {}, 0
    for name, f in PACKED.items():
        shape = getattr(p, f).shape
        out[name] = flat[at : at + shape.numel()].view(shape)
        at += shape.numel()
    out["keep"] = out["keep"].bool()
    return out


def addresses(*modules: torch.nn.Module) -> tuple:
    """Where every weight of ``modules`` lives now: a graph is valid exactly while this stays the same."""
    return tuple(t.data_ptr() for m in modules for t in (*m.parameters(), *m.buffers()))


def placement(*modules: torch.nn.Module) -> tuple:
    """The placement tokens of ``modules`` (:mod:`lib_llmcond.placement`): while they are the ones a graph was
    captured with, nothing moved and the graph is valid without looking at every weight."""
    return tuple(placement_token(m) for m in modules)


@dataclass
class _Graph:
    graph: object  # torch.cuda.CUDAGraph
    staging: torch.Tensor  # pinned host copy of the packed inputs
    flat: torch.Tensor  # the packed inputs on the device, read by the graph
    copied: object  # torch.cuda.Event: the last copy out of ``staging`` is done
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
    placement: tuple  # the tokens at capture, or since the addresses were last found unchanged
    addresses: tuple
    holds: tuple  # tensors the graph reads besides the weights (prefix keys/values): kept alive with it


class GraphRunner:
    """LLM -> adapter for static plans on one LLM; graphs captured per shape and options, LRU-bounded."""

    def __init__(self) -> None:
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._failed: set[tuple] = set()
        self._pool = None
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._graphs.clear()
            self._pool = None

    def run(self, llm, adapter, p: StaticPlan, *, attention: bool, tag: tuple = ()) -> AdapterOutput:
        """Outputs for plan ``p`` (tensors owned by the caller). ``tag``: anything else the maths depends on
        (precision mode)."""
        device = llm.device
        key = (p.key, id(adapter), attention, tag)
        flat = pack(p)
        if not (_graphs_possible(device) and adapter.static_shapes) or key in self._failed:
            return forward(llm, adapter, unpack(flat.to(device), p), p.prefix, attention)
        with self._lock:
            entry = self._graphs.get(key)
            where = placement(llm.model, adapter)
            if entry is not None and entry.placement != where:
                # moved: still valid where every weight came back to the same address (an offloading
                # policy's round trip often does, through the caching allocator)
                if entry.addresses == addresses(llm.model, adapter):
                    entry.placement = where
                else:
                    del self._graphs[key]
                    entry = None
            if entry is None:
                entry = self._capture(llm, adapter, p, flat, attention, device, where, key)
                if entry is None:
                    return forward(llm, adapter, unpack(flat.to(device), p), p.prefix, attention)
                self._graphs[key] = entry
                while len(self._graphs) > GRAPHS_PER_LLM:
                    self._graphs.popitem(last=False)
            self._graphs.move_to_end(key)
            entry.copied.synchronize()  # the previous call's copy out of the staging buffer is done
            entry.staging.copy_(flat)
            entry.flat.copy_(entry.staging, non_blocking=True)
            entry.copied.record()
            entry.graph.replay()  # type: ignore[attr-defined]
            crossattn, pooled, attn = (None if t is None else t.clone() for t in entry.outputs)
        return AdapterOutput(crossattn, pooled, attn)  # type: ignore[arg-type]

    def _capture(self, llm, adapter, p, flat, attention, device, where, key) -> _Graph | None:
        staging = flat.pin_memory()
        static = flat.to(device)
        try:
            state = llm.prefix_state_for(p.prefix)
            inputs = unpack(static, p)
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):  # warm up outside the graph (lazy inits, autotuning)
                forward(llm, adapter, inputs, p.prefix, attention)
            torch.cuda.current_stream(device).wait_stream(stream)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = forward(llm, adapter, unpack(static, p), p.prefix, attention)
        except Exception as e:  # capture is an optimisation: any failure falls back to eager, once per shape
            log.warning("llmcond: CUDA graph capture failed for %s, running eagerly: %s", key[0], e)
            self._failed.add(key)
            torch.cuda.synchronize(device)
            return None
        copied = torch.cuda.Event()
        copied.record()
        holds = () if state is None else (state,)
        outputs = (out.crossattn, out.pooled, out.attention)
        return _Graph(graph, staging, static, copied, outputs, where, addresses(llm.model, adapter), holds)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` (CPU) on ``device`` without making the host wait: through pinned memory, asynchronously."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def forward(llm, adapter, inputs: dict[str, torch.Tensor], prefix: tuple, attention: bool) -> AdapterOutput:
    """LLM -> gather -> adapter on device tensors; no host sync, shapes from the inputs only."""
    hidden = llm.hidden_states_static(inputs["ids"], inputs["mask"], inputs["pos"], prefix)
    x = gather_inputs(hidden, inputs["gather"])
    return adapter.forward_static(x, inputs["positions"], inputs["keep"], return_attention=attention)


def _graphs_possible(device: torch.device) -> bool:
    return device.type == "cuda" and hasattr(torch.cuda, "CUDAGraph") and hasattr(torch.cuda, "graph")
