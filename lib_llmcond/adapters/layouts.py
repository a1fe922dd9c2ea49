"""Key layouts of family-A files, normalised to the reference (REF) layout by a table of renames.

Accepted, besides REF's own ``nn.MultiheadAttention`` names (``attn.in_proj_weight``, ``attn.out_proj``):

- **split**: ``<attn>.q_proj / k_proj / v_proj`` and ``<attn>.o_proj`` or ``<attn>.out_proj`` (lRemixl's
  "explicit" adapters); q, k, v are concatenated along dim 0 into ``in_proj_*``.
- **converted** (LingyeSoul's "Turbo" format): block attention directly on the block
  (``wide_attention_blocks.{i}.q_proj``), and ``compression_{q,k,v,out}_proj`` / ``pooling_{q,k,v,out}_proj``.
- **dotted**: ``in_proj.weight`` / ``in_proj.bias`` for ``in_proj_weight`` / ``in_proj_bias`` (a spelling
  LingyeSoul's converter also accepts).
- **input_norm**: ``input_norm.{weight,bias}`` [llm_dim], a LayerNorm over the LLM hidden states applied before
  ``seq_projection`` (lRemixl's ``use_norm=True`` adapters); it is kept and applied.

The plan works on key names and shapes only, so a file can be inspected without reading its tensors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

# (pattern, replacement, layout name): applied to every key, first match wins.
RENAMES: tuple[tuple[re.Pattern[str], str, str], ...] = tuple(
    (re.compile(p), r, name)
    for p, r, name in (
        (
            r"^((?:wide|narrow)_attention_blocks\.\d+)\.([qkv])_proj\.(weight|bias)$",
            r"\1.attn.\2_proj.\3",
            "converted",
        ),
        (
            r"^((?:wide|narrow)_attention_blocks\.\d+)\.(?:out|o)_proj\.(weight|bias)$",
            r"\1.attn.out_proj.\2",
            "converted",
        ),
        (r"^(compression|pooling)_([qkv])_proj\.(weight|bias)$", r"\1_attention.\2_proj.\3", "converted"),
        (r"^(compression|pooling)_(?:out|o)_proj\.(weight|bias)$", r"\1_attention.out_proj.\2", "converted"),
        (r"^(.+)\.o_proj\.(weight|bias)$", r"\1.out_proj.\2", "split"),
        (r"^(.+)\.([qkv])_proj\.(weight|bias)$", r"\1.\2_proj.\3", "split"),
        (r"^(.+)\.in_proj\.(weight|bias)$", r"\1.in_proj_\2", "dotted"),
        (r"^input_norm\.(weight|bias)$", r"input_norm.\1", "input_norm"),
    )
)
_SPLIT = re.compile(r"^(.+)\.([qkv])_proj\.(weight|bias)$")
_IN_PROJ = {"weight": "in_proj_weight", "bias": "in_proj_bias"}


@dataclass
class KeyPlan:
    """Canonical key -> the source keys concatenated along dim 0 to make it, and the canonical shape (the
    result is reshaped to it, e.g. latents stored as [1, N, D])."""

    sources: dict[str, list[str]] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    layouts: set[str] = field(default_factory=set)

    @property
    def layout(self) -> str:
        return "+".join(sorted(self.layouts)) or "ref"

    def build(self, read: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, parts in self.sources.items():
            tensors = [read(p) for p in parts]
            t = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
            out[key] = t.reshape(self.shapes[key])
        return out


def plan_keys(shapes: Mapping[str, Sequence[int]]) -> KeyPlan:
    """Rename per the table, then fuse complete q/k/v triples into ``in_proj_*``; anything left over stays
    under its (renamed) name, for the strict check to report."""
    plan = KeyPlan()
    triples: dict[tuple[str, str], dict[str, str]] = {}
    for key, shape in shapes.items():
        new = key
        for pattern, repl, name in RENAMES:
            if pattern.match(key):
                new = pattern.sub(repl, key)
                plan.layouts.add(name)
                break
        split = _SPLIT.match(new)
        if split:
            base, which, kind = split.groups()
            triples.setdefault((base, kind), {})[which] = key
        plan.sources[new] = [key]
        plan.shapes[new] = tuple(int(s) for s in shape)
    for (base, kind), parts in triples.items():
        if set(parts) != {"q", "k", "v"} or len({tuple(shapes[p][1:]) for p in parts.values()}) != 1:
            continue  # incomplete or inconsistent: left for the strict check to report
        for which in "qkv":
            del plan.sources[f"{base}.{which}_proj.{kind}"]
            del plan.shapes[f"{base}.{which}_proj.{kind}"]
        sources = [parts[w] for w in "qkv"]
        first = tuple(int(s) for s in shapes[sources[0]])
        fused = f"{base}.{_IN_PROJ[kind]}"
        plan.sources[fused] = sources
        plan.shapes[fused] = (sum(int(shapes[s][0]) for s in sources), *first[1:])
    return plan
