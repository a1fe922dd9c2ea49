"""LoRAs trained together with the adapter: the ``lora_te_*`` part of a kohya-style LoRA file, merged into a
patched copy of a loaded adapter.

Key stems (what sd-scripts forks that train the RouWei adapter write): ``lora_te_`` + the module path of an
``nn.Linear`` of the reference ``LLMToSDXLAdapter`` with ``.`` replaced by ``_``; for an
``nn.MultiheadAttention`` at ``path`` the trainer keeps ``lora_te_{path}_{q|k|v}_proj``, which belong to rows
``[0, D)``, ``[D, 2D)``, ``[2D, 3D)`` of its ``in_proj_weight``, and ``lora_te_{path}_out_proj``. Each stem has
``.lora_down.weight`` [r, in], ``.lora_up.weight`` [out, r] and optionally ``.alpha`` (absent: alpha = r).
Module names contain underscores (``compression_gate_0``), so stems are looked up in a table built from the
adapter's own module names, never split on ``_``.

Merge, per target and in fp32: ``W + sum_i m_i * (alpha_i / r_i) * up_i @ down_i``, each q/k/v projection with
its own ``down`` (the reference node pack's loader concatenates the three ``up`` and keeps ``q``'s ``down``,
which is the same only when the three ``down`` are equal). The base adapter is never modified: the patched
copy shares every tensor it does not change with it.

Not ours and left alone: ``lora_unet_*`` (the host's UNet), ``lora_te1_*``/``lora_te2_*`` (CLIP). A file with
no ``lora_te_`` key is a plain UNet LoRA: silently nothing to do. A file whose ``lora_te_`` part does not fit
(unknown modules, other shapes, LoHa/LoKr/DoRA/... keys, another adapter family) or cannot be read is ignored
as a whole, with the reason in its :class:`LoraResult`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..cpu_linear import PackedLinear
from ..errors import LlmcondError
from .base import Adapter
from .files import open_tensor_file
from .llm_to_sdxl import LLMToSDXLAdapter, MultiheadAttention

PREFIX = "lora_te_"
CLIP_STEM = PREFIX + "text_model_"  # SD 1.x LoRAs use lora_te_ for their (CLIP) text encoder
UP, DOWN, ALPHA = "lora_up.weight", "lora_down.weight", "alpha"
# Suffixes of other network types (A1111's network_*.py modules) -> their names, for the message.
OTHER_TYPES = {
    "hada_w1_a": "LoHa",
    "lokr_w1": "LoKr",
    "lokr_w1_a": "LoKr",
    "dora_scale": "DoRA",
    "oft_blocks": "OFT",
    "oft_diag": "OFT",
    "on_input": "IA3",
    "diff": "full-weight diff",
    "w_norm": "norm",
    "a1.weight": "GLoRA",
    "lora_mid.weight": "LoCon (conv)",
}
_SHOWN = 4  # offending keys named in a message


@dataclass(frozen=True)
class Target:
    """Where one stem goes: a module path, and for attention the rows of its ``in_proj_weight``."""

    module: str
    rows: tuple[int, int] | None  # None: the whole weight of a linear
    shape: tuple[int, int]  # (out, in) of the patched block


@dataclass(frozen=True)
class LoraPair:
    up: torch.Tensor  # [out, r] fp32
    down: torch.Tensor  # [r, in] fp32
    alpha: float | None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def factors(self, multiplier: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(``m * alpha / rank * up``, ``down``) on ``device``: their product is this LoRA's weight delta."""
        scale = 1.0 if self.alpha is None else self.alpha / self.rank
        return (multiplier * scale) * self.up.to(device), self.down.to(device)


@dataclass(frozen=True)
class LoraResult:
    """What became of one (file, multiplier)."""

    path: str
    multiplier: float
    modules: int = 0  # stems merged; 0 without an error: nothing for the adapter (no lora_te_ keys, or m = 0)
    error: str | None = None  # why the file's adapter part was ignored
    fix: str | None = None

    @property
    def applied(self) -> bool:
        return self.error is None and self.modules > 0

    @property
    def name(self) -> str:
        return Path(self.path).stem

    def describe(self) -> str:
        """One line for the console: ``name (path): reason. Fix``."""
        fix = f". {self.fix}" if self.fix else ""
        return f"adapter LoRA {self.name} ({self.path}) ignored: {self.error}{fix}"


@dataclass(frozen=True)
class PatchedAdapter:
    adapter: Adapter  # the base itself when nothing was merged
    results: tuple[LoraResult, ...]


class LoraMismatch(LlmcondError):
    """The file's adapter part does not fit this adapter."""


# -- the stem table -----------------------------------------------------------------------------------------
def stem(module_path: str) -> str:
    return PREFIX + module_path.replace(".", "_")


def stem_table(adapter: nn.Module) -> dict[str, Target]:
    """Every stem a LoRA for ``adapter`` may use, from the adapter's own module names. The packed copies of an
    attention's input projection (``in_packed``) are no module of the reference and get no stem."""
    table: dict[str, Target] = {}
    clashes: set[str] = set()

    def add(key: str, target: Target) -> None:
        if key in table:
            clashes.add(key)  # two module paths with the same stem: ambiguous, never patched
        table[key] = target

    for name, module in adapter.named_modules():
        if isinstance(module, MultiheadAttention):
            d = module.dim
            for i, which in enumerate("qkv"):
                add(stem(f"{name}.{which}_proj"), Target(name, (i * d, (i + 1) * d), (d, d)))
        elif isinstance(module, (nn.Linear, PackedLinear)) and ".in_packed." not in f".{name}.":
            add(stem(name), Target(name, None, (module.out_features, module.in_features)))
    for key in clashes:
        del table[key]
    return table


# -- reading a file ------------------------------------------------------------------------------------------
def read_adapter_lora(path: str | Path) -> dict[str, LoraPair]:
    """The ``lora_te_`` stems of a LoRA file with their fp32 factors ({} for a UNet-only LoRA).

    Raises ``ModelFileError`` for an unreadable file and :class:`LoraMismatch` for keys that are no plain LoRA."""
    tf = open_tensor_file(path)
    keys = [k for k in tf.shapes if k.startswith(PREFIX)]
    if not keys:
        return {}
    groups: dict[str, dict[str, str]] = {}
    for key in keys:
        head, _, part = key.partition(".")
        groups.setdefault(head, {})[part] = key
    _check_parts(groups, tf.path)
    pairs: dict[str, LoraPair] = {}
    with tf.reader() as read:
        for head, parts in sorted(groups.items()):
            alpha = read(parts[ALPHA]) if ALPHA in parts else None
            up, down = read(parts[UP]), read(parts[DOWN])
            if up.dim() != 2 or down.dim() != 2 or up.shape[1] != down.shape[0]:
                raise LoraMismatch(
                    f"{head}: lora_up {list(up.shape)} and lora_down {list(down.shape)} are no pair of "
                    "linear LoRA factors",
                    path=tf.path,
                    fix=_FIX,
                )
            if alpha is not None and alpha.numel() != 1:
                raise LoraMismatch(f"{head}.alpha is not one number", path=tf.path, fix=_FIX)
            pairs[head] = LoraPair(up, down, None if alpha is None else float(alpha.reshape(()).item()))
    return pairs


_FIX = (
    "Use the LoRA trained together with this adapter, or give it a text-encoder weight of 0 "
    "(<lora:name:0:w>) to apply only its UNet part"
)


def _check_parts(groups: dict[str, dict[str, str]], path: Path) -> None:
    for head, parts in groups.items():
        other = sorted(p for p in parts if p not in (UP, DOWN, ALPHA))
        if other:
            kind = next((OTHER_TYPES[p] for p in other if p in OTHER_TYPES), None)
            what = f"{kind} keys" if kind else "keys of a network type llmcond does not merge"
            raise LoraMismatch(
                f"{what} for the adapter ({head}.{other[0]}); only plain LoRA (lora_up/lora_down/alpha) is "
                "merged into the adapter",
                path=path,
                fix=_FIX,
            )
        if UP not in parts or DOWN not in parts:
            raise LoraMismatch(f"{head} lacks lora_up or lora_down", path=path, fix=_FIX)


def check_fit(pairs: dict[str, LoraPair], table: dict[str, Target], path: str | Path) -> None:
    """Every stem names a module of this adapter, with factors of its shape."""
    unknown = sorted(k for k in pairs if k not in table)
    wrong = sorted(
        f"{k} {[pairs[k].up.shape[0], pairs[k].down.shape[1]]} (adapter: {list(table[k].shape)})"
        for k in pairs
        if k in table and (pairs[k].up.shape[0], pairs[k].down.shape[1]) != table[k].shape
    )
    if not (unknown or wrong):
        return
    if unknown and all(k.startswith(CLIP_STEM) for k in unknown):
        raise LoraMismatch(
            "its lora_te_ keys are a CLIP text encoder's (an SD 1.x LoRA), not an LLM adapter's",
            path=path,
            fix="Use an SDXL LoRA; SD 1.x LoRAs do not fit SDXL models",
        )
    parts = []
    if unknown:
        parts.append(f"{len(unknown)} unknown module(s): {', '.join(unknown[:_SHOWN])}")
    if wrong:
        parts.append(f"{len(wrong)} of other shapes: {', '.join(wrong[:_SHOWN])}")
    raise LoraMismatch(
        "its adapter part was trained for another adapter: " + "; ".join(parts), path=path, fix=_FIX
    )


# -- merging -------------------------------------------------------------------------------------------------
def patch_adapter(base: Adapter, loras: Sequence[tuple[str | Path, float]]) -> PatchedAdapter:
    """``base`` with the ``lora_te_`` parts of ``loras`` merged (a copy; ``base`` itself when nothing merges)."""
    table: dict[str, Target] | None = None
    device = base.device
    deltas: dict[Target, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # low-rank factors, added at merge
    results = []
    with torch.inference_mode(False), torch.no_grad():  # normal tensors even inside a host's inference mode
        for path, multiplier in loras:
            path, multiplier = str(path), float(multiplier)
            if multiplier == 0:
                results.append(LoraResult(path, multiplier))
                continue
            try:
                pairs = read_adapter_lora(path)
                if pairs:
                    _check_family(base, path)
                    table = stem_table(base) if table is None else table
                    check_fit(pairs, table, path)
            except LlmcondError as e:
                results.append(LoraResult(path, multiplier, error=e.what, fix=e.fix))
                continue
            for key, pair in pairs.items():
                deltas.setdefault(table[key], []).append(pair.factors(multiplier, device))
            results.append(LoraResult(path, multiplier, modules=len(pairs)))
        adapter = _merged_copy(base, deltas) if deltas else base
    return PatchedAdapter(adapter, tuple(results))


def _check_family(base: Adapter, path: str) -> None:
    if not isinstance(base, LLMToSDXLAdapter):
        raise LoraMismatch(
            "adapter LoRAs are known only for the LLMToSDXLAdapter family (RouWei adapters); this adapter is a "
            f"{type(base).__name__} ({base.family})",
            path=path,
            fix="Use this LoRA with the adapter it was trained with",
        )


def _merged_copy(base: Adapter, deltas: dict[Target, list[tuple[torch.Tensor, torch.Tensor]]]) -> Adapter:
    """A structural copy of ``base`` sharing all its tensors, with the targets' weights replaced by
    ``W + sum(up' @ down)`` (one ``addmm`` per LoRA: no full-size delta is ever held)."""
    memo = _shared_tensors(base)
    memo[id(base.idle_packer)] = None  # the base's background packer (engine-owned) is not copied
    patched = copy.deepcopy(base, memo)
    by_module: dict[str, list[Target]] = {}
    for target in deltas:
        by_module.setdefault(target.module, []).append(target)
    for name, targets in by_module.items():
        source, module = base.get_submodule(name), patched.get_submodule(name)
        if isinstance(module, MultiheadAttention):
            weight, bias = source.dense_in_proj()
            weight, rows = weight.detach().to(torch.float32), {t.rows: deltas[t] for t in targets}
            d = module.dim
            blocks = [weight[i * d : (i + 1) * d] for i in range(3)]  # q, k, v
            blocks = [_added(b, rows[(i * d, (i + 1) * d)]) if (i * d, (i + 1) * d) in rows else b
                      for i, b in enumerate(blocks)]  # fmt: skip
            module.set_in_proj(torch.cat(blocks), bias.detach())
        else:
            (t,) = targets
            _set_linear(patched, name, _added(_dense(source), deltas[t]))
    patched.forget_constants()
    patched.requires_grad_(False)
    return patched.eval()


def _added(weight: torch.Tensor, factors: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """A new tensor ``weight + sum(up @ down)`` (``weight`` itself untouched)."""
    (up, down), rest = factors[0], factors[1:]
    out = torch.addmm(weight, up, down)
    for up, down in rest:
        out.addmm_(up, down)
    return out


def _dense(linear: nn.Module) -> torch.Tensor:
    weight = linear.dense_weight() if isinstance(linear, PackedLinear) else linear.weight
    return weight.detach().to(torch.float32)


def _set_linear(root: nn.Module, name: str, weight: torch.Tensor) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = getattr(parent, child)
    if isinstance(old, PackedLinear):
        setattr(parent, child, PackedLinear(weight, old.bias))  # packed at its first CPU forward
    else:
        old.weight = nn.Parameter(weight, requires_grad=False)  # ``old`` is the copy's own module


def _shared_tensors(module: nn.Module) -> dict[int, torch.Tensor]:
    """A ``deepcopy`` memo that maps every tensor held by ``module``'s submodules to itself (so a copy shares
    them: parameters, buffers, packed weights, cached constants)."""
    memo: dict[int, torch.Tensor] = {}

    def visit(value: object, depth: int) -> None:
        if isinstance(value, torch.Tensor):
            memo[id(value)] = value
        elif depth < 3 and isinstance(value, dict):
            for v in value.values():
                visit(v, depth + 1)
        elif depth < 3 and isinstance(value, (list, tuple)):
            for v in value:
                visit(v, depth + 1)

    for m in module.modules():
        visit(vars(m), 0)
    return memo
