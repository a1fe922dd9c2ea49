"""The contract every adapter family follows: LLM hidden states in, SDXL conditioning out."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lib_llmcond.placement import TracksMoves

if TYPE_CHECKING:
    from lib_llmcond.cpu_linear import IdlePacker


@dataclass
class AdapterOutput:
    crossattn: torch.Tensor  # [B, T, 2048]
    pooled: torch.Tensor  # [B, 1280]
    attention: torch.Tensor | None = None  # [B, T, L]: head-averaged, output tokens on input tokens


class Adapter(TracksMoves):
    """Base class: fp32, eval mode, autocast off, no gradients.

    Subclasses set ``family``, ``llm_dim``, ``max_input_tokens`` (inputs beyond it are cut) and
    ``output_tokens``, and implement ``_forward(hidden, mask, return_attention)`` on prepared fp32 inputs.
    """

    family: str = ""
    llm_dim: int
    max_input_tokens: int
    output_tokens: int
    output_dim: int
    pooled_dim: int

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor | None = None, *, return_attention: bool = False
    ) -> AdapterOutput:
        """Checked fp32 inputs, no autograd, autocast off; the family's maths is in ``_forward``."""
        hidden, mask = self._prepare(hidden, mask)
        with fp32_inference(hidden.device):
            return self._forward(hidden, mask, return_attention)

    def _forward(
        self, hidden: torch.Tensor, mask: torch.Tensor | None, return_attention: bool
    ) -> AdapterOutput:
        raise NotImplementedError

    static_shapes: bool = False  # whether :meth:`forward_static` runs without host syncs (CUDA graphs)
    idle_packer: IdlePacker | None = None  # on the CPU: re-lays the linears between requests (engine-owned)

    def forward_static(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        keep: torch.Tensor,
        *,
        return_attention: bool = False,
    ) -> AdapterOutput:
        """The same outputs from inputs laid out by the caller: ``hidden`` [B, n, llm_dim] fp32 holds each row's
        real inputs first, ``positions`` [B, n] their input positions, ``keep`` [B, n] bool marks the real slots
        (at least one per row). ``attention`` comes back on the slots, [B, T, n].

        This default spreads the slots back to positions and runs :meth:`forward` (correct, not sync-free);
        families with ``static_shapes`` compute on the slots directly."""
        b, n, _ = hidden.shape
        length = int(torch.where(keep, positions + 1, 0).max()) if n else 1
        full = hidden.new_zeros(b, length, hidden.shape[-1])
        mask = torch.zeros(b, length, dtype=torch.bool, device=hidden.device)
        rows = torch.arange(b, device=hidden.device)[:, None].expand(b, n)
        full[rows[keep], positions[keep]] = hidden[keep]
        mask[rows[keep], positions[keep]] = True
        out = self.forward(full, mask, return_attention=return_attention)
        if out.attention is not None:
            out.attention = out.attention.gather(
                2, positions[:, None, :].expand(-1, out.attention.shape[1], -1)
            )
            out.attention = out.attention * keep[:, None, :]
        return out

    def pack_for_cpu(self) -> None:
        """Pre-pack weights for faster CPU matmuls (``cpu_linear``); families that do not need it skip it."""

    def train(self, mode: bool = True) -> Adapter:  # inference-only module: dropout never applies
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _prepare(
        self, hidden: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Check shapes and move the inputs to this module's device as fp32 / bool."""
        if hidden.dim() != 3 or hidden.shape[-1] != self.llm_dim:
            raise ValueError(
                f"adapter expects hidden states [B, L, {self.llm_dim}], got {list(hidden.shape)}"
            )
        hidden = hidden.to(device=self.device, dtype=torch.float32)
        if mask is not None:
            if mask.shape != hidden.shape[:2]:
                raise ValueError(
                    f"mask shape {list(mask.shape)} does not match hidden {list(hidden.shape[:2])}"
                )
            mask = mask.to(self.device) != 0
        return hidden, mask


@contextlib.contextmanager
def fp32_inference(device: torch.device) -> Iterator[None]:
    """No autograd and autocast switched off for ``device`` (a host's autocast must not reach the adapter)."""
    with torch.no_grad(), _autocast_off(device):
        yield


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type without autocast support
        return contextlib.nullcontext()
