"""Routing tokens to their adapter: the autograd kernel and the layer that holds K LoRA pairs.

Every adapted linear layer becomes a :class:`MultiLoRALinear` with K stacked (A, B) pairs; a shared
:class:`Routing` says which adapter each row (or each token of a packed row) goes through, and
:class:`RoutedLoRA` computes the LoRA outputs run by run with a hand-written backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

Run = tuple[int, int, int]
"""``(adapter, start, end)``: rows (or tokens) ``start:end`` go through ``adapter``."""


@dataclass
class Routing:
    """Which adapter each row, or each token of a packed batch, goes through; shared by all layers
    of one model.

    ``runs`` lists ``(adapter, start, end)`` for consecutive rows with the same adapter, or for
    consecutive tokens when ``per_token``; ``covers`` is the number of rows (tokens) they cover
    (``None``: one adapter for a batch of any size).
    """

    runs: list[Run] | None = None
    covers: int | None = None
    per_token: bool = False

    def tokenruns_of(self, x: torch.Tensor) -> list[Run]:
        """The runs over the tokens of ``x`` (``[rows, ..., features]``) flattened to ``[tokens, features]``."""
        if self.runs is None:
            raise RuntimeError("MultiLoRALinear needs a route: run the model inside `with run.route(owners):`")
        tokens = x.numel() // x.shape[-1]
        if self.covers is None:
            return [(self.runs[0][0], 0, tokens)]
        if self.per_token:
            if tokens != self.covers:
                raise RuntimeError(f"the route covers {self.covers} tokens but the batch has {tokens}")
            return self.runs
        if x.shape[0] != self.covers:
            raise RuntimeError(f"the route covers {self.covers} rows but the batch has {x.shape[0]}")
        per_row = tokens // self.covers
        return [(k, start * per_row, end * per_row) for k, start, end in self.runs]


class RoutedLoRA(torch.autograd.Function):
    """``out[t] = base[t] + scaling[k] * B[k] @ A[k] @ x[t]`` for every token ``t`` of a run of adapter ``k``.

    Written by hand because autograd over per-run slices of the stacked weights (or over a gathered
    subset of them) pays, for every layer and pass, a full-size zero gradient per slice plus a
    scatter; here each run costs two matmuls forward and four backward, written straight into the
    gradients, and runs of any lengths cost the same (so packed batches of unequal sequences need no
    padding).
    """

    @staticmethod
    def forward(ctx, x, base, lora_A, lora_B, runs, scalings):  # noqa: D102 (documented on the class)
        hidden = x.new_empty(x.shape[0], lora_A.shape[1])
        sizes = [end - start for _, start, end in runs]
        # split/unbind make all the views in one call each, instead of slicing per run in Python.
        pieces = zip(x.split(sizes), hidden.split(sizes), base.split(sizes))
        A, B = lora_A.unbind(), lora_B.unbind()
        for (k, _, _), (x_k, hidden_k, base_k) in zip(runs, pieces):
            torch.mm(x_k, A[k].T, out=hidden_k)
            base_k.addmm_(hidden_k, B[k].T, alpha=scalings[k])
        ctx.mark_dirty(base)  # the frozen layer's fresh output, updated in place: no copy
        ctx.save_for_backward(x, hidden, lora_A, lora_B)
        ctx.runs, ctx.sizes, ctx.scalings = runs, sizes, scalings
        return base

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        x, hidden, lora_A, lora_B = ctx.saved_tensors
        need_x, _, need_A, need_B = ctx.needs_input_grad[:4]
        sizes, scalings = ctx.sizes, ctx.scalings
        grad_out = grad_out.contiguous()
        grad_hidden = torch.empty_like(hidden)
        grad_x = torch.empty_like(x) if need_x else None
        grad_A = torch.empty_like(lora_A) if need_A else None
        grad_B = torch.empty_like(lora_B) if need_B else None
        A, B = lora_A.unbind(), lora_B.unbind()
        grad_As = grad_A.unbind() if need_A else None
        grad_Bs = grad_B.unbind() if need_B else None
        x_grads = grad_x.split(sizes) if need_x else [None] * len(sizes)
        pieces = zip(grad_out.split(sizes), hidden.split(sizes), grad_hidden.split(sizes), x.split(sizes), x_grads)
        # The weight gradients start empty: an adapter's first run writes its slice (beta=0 ignores
        # what was there), a later run of the same adapter adds to it, an adapter with no run is zeroed.
        written: set[int] = set()
        for (k, _, _), (out_k, hidden_k, grad_hidden_k, x_k, grad_x_k) in zip(ctx.runs, pieces):
            beta = 1.0 if k in written else 0.0
            written.add(k)
            grad_hidden_k.addmm_(out_k, B[k], beta=0.0, alpha=scalings[k])
            if need_B:
                grad_Bs[k].addmm_(out_k.T, hidden_k, beta=beta, alpha=scalings[k])
            if need_A:
                grad_As[k].addmm_(grad_hidden_k.T, x_k, beta=beta)
            if need_x:
                torch.mm(grad_hidden_k, A[k], out=grad_x_k)
        for k in set(range(len(A))) - written:
            for grads in (grad_As, grad_Bs):
                if grads is not None:
                    grads[k].zero_()
        return grad_x, grad_out, grad_A, grad_B, None, None


class MultiLoRALinear(torch.nn.Module):
    """A frozen ``nn.Linear`` plus K LoRA pairs; each row (or token) uses the pair of its adapter.

    ``y = base(x) + B[k] @ (scaling[k] * A[k] @ dropout(x))`` for a row owned by adapter ``k``; the
    LoRA branch runs in the adapters' dtype (float32), as in PEFT. The K pairs are stacked,
    ``lora_A`` ``[K, r, in]`` and ``lora_B`` ``[K, out, r]`` (views into the weight table of
    :func:`adapted_many`): one dense gradient per layer instead of K small ones to accumulate. Rows
    are routed in runs of consecutive rows (a batch sorted by adapter has one run per adapter); a
    packed training batch is routed in runs of tokens.
    """

    def __init__(
        self,
        base: torch.nn.Linear,
        lora_A: torch.Tensor,
        lora_B: torch.Tensor,
        scalings: Sequence[float],
        dropout: float,
        routing: Routing,
    ):
        super().__init__()
        self.base = base
        # Parameters over the given tensors' memory (not copies): the adapters' weight table.
        self.lora_A = torch.nn.Parameter(lora_A)
        self.lora_B = torch.nn.Parameter(lora_B)
        self.scalings = list(scalings)
        self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()
        self.routing = routing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        runs = self.routing.tokenruns_of(x)
        x = x.reshape(-1, x.shape[-1])
        result = self.base(x)  # flat, so that it is no view: it is updated in place below
        lora_x = self.dropout(x.to(self.lora_A.dtype))
        out = RoutedLoRA.apply(lora_x, result.to(self.lora_A.dtype), self.lora_A, self.lora_B, runs, self.scalings)
        return out.to(result.dtype).view(*shape[:-1], out.shape[-1])


def runs_of(owners: Sequence[int], sizes: Sequence[int]) -> list[Run]:
    """Runs of consecutive items (rows of size 1, or packed sequences of their token counts) with the same owner."""
    runs: list[Run] = []
    start = 0
    for owner, size in zip(owners, sizes):
        if runs and runs[-1][0] == owner:
            runs[-1] = (owner, runs[-1][1], start + size)
        else:
            runs.append((owner, start, start + size))
        start += size
    return runs
