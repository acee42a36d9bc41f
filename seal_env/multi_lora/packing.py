"""Packing the sequences of a joint training step into passes without padding."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import PreTrainedModel

def default_max_batch_tokens(device: torch.device) -> int:
    """Tokens packed into one training pass.

    A packed pass attends over all its tokens under a block-diagonal mask, so attention costs grow
    with the square of the pass while the useful work grows linearly. On a CPU the matmuls reach
    their best rate at a few hundred rows, so passes stay short; on a GPU a pass costs about the same
    for a few tokens or a few thousand, so the bound is activation memory.
    """
    return 4096 if device.type == "cuda" else 512


# model -> whether it keeps sequences packed into one row apart (see keeps_packed_sequences_apart).
_PACKING_SUPPORT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def keeps_packed_sequences_apart(model: PreTrainedModel) -> bool:
    """Whether the model, given ``position_ids`` that restart at 0 and no attention mask, attends
    only within each packed sequence (Transformers' mask utilities do this for the decoders built on
    them). Checked once per model: two short sequences packed must give the second one's logits
    alone; any leak across the boundary changes them at the first digit."""
    if model not in _PACKING_SUPPORT:
        device = next(model.parameters()).device
        first, second = torch.tensor([[3, 1, 4, 1]], device=device), torch.tensor([[5, 2, 6]], device=device)
        positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2]], device=device)
        was_training = model.training
        model.eval()
        try:
            packed = model(input_ids=torch.cat([first, second], 1), position_ids=positions, use_cache=False).logits[0, 4:]
            alone = model(input_ids=second, use_cache=False).logits[0]
        finally:
            model.train(was_training)
        scale = alone.float().abs().max().item()
        _PACKING_SUPPORT[model] = bool(torch.allclose(packed.float(), alone.float(), rtol=0, atol=1e-2 * scale + 1e-6))
    return _PACKING_SUPPORT[model]


def pack_passes(lengths: Sequence[int], *, max_batch_tokens: int, max_rows: int | None = None) -> list[list[int]]:
    """Cut rows, in their order, into passes of at most ``max_batch_tokens`` tokens (and ``max_rows``
    rows); a row longer than that gets a pass alone. Rows of a pass are packed, not padded."""
    passes: list[list[int]] = []
    tokens = 0
    for row, length in enumerate(lengths):
        if not passes or tokens + length > max_batch_tokens or len(passes[-1]) == max_rows:
            passes.append([])
            tokens = 0
        passes[-1].append(row)
        tokens += length
    return passes




@dataclass
class PackingStats:
    """How the joint training of one :func:`adapted_many` call was batched."""

    adapters: int = 0
    steps: int = 0
    """Optimiser steps (each trains one mini-batch of every adapter that still has one)."""
    passes: int = 0
    """Forward/backward passes (micro-batches)."""
    tokens: int = 0
    """Tokens of the training rows, all epochs (packed end to end: no padding is computed)."""
    seconds: float = 0.0
