"""Many LoRA adapters on one frozen model, trained and evaluated together.

:func:`adapted_many` is the batched form of :func:`seal_env.inner_loop.adapted`: it attaches K fresh,
independent LoRA adapters to the model (one per self-edit), trains all of them in shared
forward/backward passes, hands the model to the caller for evaluation, and removes the adapters,
leaving the base weights bit-identical.

How the K updates stay independent although they share every pass:

* **Routing.** Every adapted linear layer is a :class:`MultiLoRALinear` holding K (A, B) pairs. Each
  batch row goes through the base layer and through the LoRA pair of the adapter that owns the row
  (set with :meth:`MultiAdaptation.route`). Rows never mix in a transformer, so the gradient of
  adapter i depends only on the rows of self-edit i.
* **Loss.** The loss of a pass is the SUM over adapters of each adapter's mean token loss over its own
  mini-batch, exactly the loss :func:`~seal_env.inner_loop.train_lora` minimises for that adapter
  alone, so every adapter's gradient is scaled as in separate training.
* **Optimiser.** All adapters' weights live in one ``[K, P_lora]`` table (each layer's stacked
  parameters are views into it). One ``torch.optim.AdamW`` has one parameter group per adapter (its
  own learning rate and weight decay) over that adapter's row. AdamW is elementwise, so this equals
  K separate optimisers; an adapter with no rows in a step has no gradient and is skipped (its step
  count stays its own).
* **Clipping.** Each adapter's gradient is clipped by its own norm, as ``train_lora`` clips the one
  adapter it trains.
* **Order and initialisation.** Adapter i sees its examples in the order ``train_lora`` would use
  (the same seeded permutation per epoch) and starts from the weights PEFT draws in ``adapted()``
  with the same config (same seed), so K adapters trained together match K sequential ``adapted()``
  runs up to floating-point rounding (``tests/test_multi_lora.py`` states the tolerance).

Scheduling: optimiser step t trains mini-batch t of every adapter that still has one; an adapter
that has finished simply has no rows in later steps. The sequences of a step are packed end to end
into one row (``position_ids`` restart at 0 with each, so Transformers attends only within a
sequence, as in TRL's padding-free training) and cut into passes of at most ``max_batch_tokens``
tokens (gradients accumulate over them). Self-edits of different lengths thus share passes with no
padding; each layer routes the tokens of a pass in runs, one per adapter.

Why not PEFT: PEFT's mixed-adapter batches (``adapter_names=``) work for inference only (it refuses
them in training mode) and loop over adapters with fancy indexing; training K adapters per row needs
the routing above, written here in plain PyTorch.

Usage::

    plans = [TrainingPlan(examples_0, InnerLoopConfig()), TrainingPlan(examples_1, InnerLoopConfig())]
    with adapted_many(model, tokenizer, plans) as run:
        print([r.final_loss for r in run.results], run.stats.passes)
        with run.route([0, 0, 1]), torch.no_grad():  # rows 0, 1 -> adapter 0; row 2 -> adapter 1
            logits = run.model(input_ids=ids).logits
"""

from __future__ import annotations

import math
import time
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from peft.tuners.lora import Linear as PeftLoraLinear
from peft.tuners.lora import LoraLayer
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from seal_env.inner_loop import (
    DIVERGED,
    InnerLoopConfig,
    PreparedUpdate,
    TrainingPlan,
    TrainResult,
    adamw,
    adapted,
    clip_grad_norms_,
    prepare_update,
    seeded_rng,
    training_state_restored,
)
from seal_env.lm import pack_batch, token_log_probs

def lora_structure(config: InnerLoopConfig) -> tuple:
    """What adapters trained together must share: rank, target modules and dropout.

    The other settings (learning rate, alpha, epochs, batch size, seed, ...) may differ per adapter.
    """
    targets = config.target_modules
    return (config.rank, targets if isinstance(targets, str) else tuple(sorted(targets)), config.dropout)


def default_max_batch_tokens(device: torch.device) -> int:
    """Tokens packed into one training pass.

    A packed pass attends over all its tokens under a block-diagonal mask, so attention costs grow
    with the square of the pass while the useful work grows linearly. On a CPU the matmuls reach
    their best rate at a few hundred rows, so passes stay short; on a GPU a pass costs about the same
    for a few tokens or a few thousand, so the bound is activation memory.
    """
    return 4096 if device.type == "cuda" else 512


# ---------------------------------------------------------------------------------------- layers

Run = tuple[int, int, int]
"""``(adapter, start, end)``: rows (or tokens) ``start:end`` go through ``adapter``."""


@dataclass
class _Routing:
    """Which adapter each row, or each token of a packed batch, goes through; shared by all layers
    of one model.

    ``runs`` lists ``(adapter, start, end)`` for consecutive rows with the same adapter, or for
    consecutive tokens when ``per_token``; ``covers`` is the number of rows (tokens) they cover
    (``None``: one adapter for a batch of any size).
    """

    runs: list[Run] | None = None
    covers: int | None = None
    per_token: bool = False

    def token_runs(self, x: torch.Tensor) -> list[Run]:
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


class _RoutedLoRA(torch.autograd.Function):
    """``out[t] = base[t] + scaling[k] * B[k] @ A[k] @ x[t]`` for every token ``t`` of a run of adapter ``k``.

    Written by hand because autograd over per-run slices of the stacked weights (or over a gathered
    subset of them) pays, for every layer and pass, a full-size zero gradient per slice plus a
    scatter; here each run costs two matmuls forward and four backward, written straight into the
    gradients, and runs of any lengths cost the same (so packed batches of unequal sequences need no
    padding). Measured on one layer of the default model with 8 unequal runs: LoRA overhead over
    the frozen layer cut from ~4.5 ms to ~2 ms per forward/backward.
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
        routing: _Routing,
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
        runs = self.routing.token_runs(x)
        x = x.reshape(-1, x.shape[-1])
        result = self.base(x)  # flat, so that it is no view: it is updated in place below
        lora_x = self.dropout(x.to(self.lora_A.dtype))
        out = _RoutedLoRA.apply(lora_x, result.to(self.lora_A.dtype), self.lora_A, self.lora_B, runs, self.scalings)
        return out.to(result.dtype).view(*shape[:-1], out.shape[-1])


# ------------------------------------------------------------------------------ initial weights

# model -> {(seed, lora_structure, alpha): {module name: (A, B, scaling)}}. PEFT's initialisation
# depends only on the architecture, the seed and the LoRA settings, and drawing it costs a full
# get_peft_model()/unload() (about a second on the default model), so it is drawn once per key.
_INITIAL_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _initial_weights(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: InnerLoopConfig
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """The LoRA weights ``adapted(model, tokenizer, examples, config)`` starts training from.

    Obtained by running ``adapted()`` itself on no examples (it attaches the adapter, finds nothing
    to train and yields), so the initialisation is PEFT's, bit for bit, whatever PEFT version runs.
    """
    key = (config.seed, lora_structure(config), config.alpha)
    cache = _INITIAL_WEIGHTS.setdefault(model, {})
    if key not in cache:
        weights = {}
        with adapted(model, tokenizer, [], config) as run:
            for name, module in run.model.get_base_model().named_modules():
                if not isinstance(module, LoraLayer):
                    continue
                if type(module) is not PeftLoraLinear or module.fan_in_fan_out:
                    raise NotImplementedError(
                        f"multi_lora supports LoRA on nn.Linear layers only; {name} is {type(module.base_layer).__name__}"
                    )
                weights[name] = (
                    module.lora_A["default"].weight.detach().clone(),
                    module.lora_B["default"].weight.detach().clone(),
                    float(module.scaling["default"]),
                )
        cache[key] = weights
    return cache[key]


def _weight_table(
    initial: Sequence[dict[str, tuple[torch.Tensor, torch.Tensor, float]]], device: torch.device
) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """All adapters' initial LoRA weights in one ``[K, P_lora]`` table, adapter k's in row k, and per
    adapted module the stacked views into it the layer uses, ``[K, r, in]`` and ``[K, out, r]``."""
    pairs = [(name, which) for name in initial[0] for which in (0, 1)]  # which: 0 for A, 1 for B
    shapes = [initial[0][name][which].shape for name, which in pairs]
    dtype = initial[0][pairs[0][0]][0].dtype
    table = torch.empty(len(initial), sum(shape.numel() for shape in shapes), dtype=dtype, device=device)
    views: dict[str, list[torch.Tensor]] = {}
    for (name, which), shape, columns in zip(pairs, shapes, table.split([shape.numel() for shape in shapes], dim=1)):
        view = columns.unflatten(1, shape)
        view.copy_(torch.stack([w[name][which] for w in initial]))
        views.setdefault(name, []).append(view)
    return table, {name: (a, b) for name, (a, b) in views.items()}


# ----------------------------------------------------------------------------------- packing


# model -> whether it keeps sequences packed into one row apart (see _keeps_packed_sequences_apart).
_PACKING_SUPPORT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def _keeps_packed_sequences_apart(model: PreTrainedModel) -> bool:
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


def _runs(owners: Sequence[int], sizes: Sequence[int]) -> list[Run]:
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


# ------------------------------------------------------------------------------------- training


class MultiAdaptation:
    """Yielded by :func:`adapted_many`: the model with K trained adapters (valid only inside the
    ``with`` block), one :class:`~seal_env.inner_loop.TrainResult` per adapter and the packing stats.

    ``result.seconds`` of adapter i is the wall time from the start of the joint training until
    adapter i finished (its last step or its failure).
    """

    def __init__(self, model: PreTrainedModel, layers: dict[str, MultiLoRALinear], routing: _Routing, weights: torch.Tensor):
        self.model = model
        self.weights = weights
        """All adapters' LoRA weights, ``[K, P_lora]``: the layers' parameters are views into it."""
        self.num_adapters = weights.shape[0]
        self._device = next(model.parameters()).device
        self.layers = layers
        self._routing = routing
        self.results: list[TrainResult] = []
        self.stats = PackingStats()

    @contextmanager
    def route(self, owners: int | Sequence[int]) -> Iterator[None]:
        """Inside the block, batch row r goes through adapter ``owners[r]`` (an int: every row
        through that adapter, whatever the batch size). Forward passes must then have exactly
        ``len(owners)`` rows, in that order."""
        if isinstance(owners, int):
            owners, covers = [owners], None
        else:
            owners = [int(o) for o in owners]
            covers = len(owners)
        if not owners:
            raise ValueError("route needs at least one row")
        bad = [o for o in owners if not 0 <= o < self.num_adapters]
        if bad:
            raise ValueError(f"adapter indices must be in [0, {self.num_adapters}), got {bad[0]}")
        with self._routed(_runs(owners, [1] * len(owners)), covers, per_token=False):
            yield

    @contextmanager
    def _routed(self, runs: list[Run], covers: int | None, *, per_token: bool) -> Iterator[None]:
        routing = self._routing
        previous = (routing.runs, routing.covers, routing.per_token)
        routing.runs, routing.covers, routing.per_token = runs, covers, per_token
        try:
            yield
        finally:
            routing.runs, routing.covers, routing.per_token = previous

    def lora_weights(self, adapter: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Adapter ``adapter``'s ``(A, B)`` per adapted module, named as in the base model (the
        names PEFT's ``get_base_model().named_modules()`` gives its LoRA layers)."""
        return {name: (layer.lora_A[adapter].detach(), layer.lora_B[adapter].detach()) for name, layer in self.layers.items()}

    # ----------------------------------------------------------------------------- training

    def _train(
        self,
        adapters: list[PreparedUpdate],
        *,
        max_batch_tokens: int,
        packed: bool,
        progress: bool,
    ) -> None:
        start = time.perf_counter()
        stats = self.stats
        stats.adapters = len(adapters)
        # The optimiser sees one tensor per adapter, its row of the weight table (one group per
        # adapter: its own learning rate, weight decay and step count), not one per layer: per-tensor
        # overheads of AdamW and clipping had cost ~7% of a K=8 step. After the passes of a step each
        # layer's gradient is copied into its columns of a gradient table; an adapter that did not
        # train in the step gets no gradient, so the optimiser and the clipping skip it.
        table_rows = self.weights.unbind()
        grad_table = torch.empty_like(self.weights)
        layer_params = [p for layer in self.layers.values() for p in (layer.lora_A, layer.lora_B)]
        grad_columns = grad_table.split([p[0].numel() for p in layer_params], dim=1)
        optimizer = adamw(
            [
                {"params": [row], "lr": a.config.learning_rate, "weight_decay": a.config.weight_decay}
                for row, a in zip(table_rows, adapters)
            ]
        )
        device = self._device
        live = [a.result.error is None for a in adapters]
        total_steps = max((len(a.batches) for a in adapters), default=0)
        self.model.train()
        for step in tqdm(range(total_steps), desc=f"training {len(adapters)} adapters", disable=not progress, leave=False):
            active = [i for i, a in enumerate(adapters) if live[i] and step < len(a.batches)]
            if not active:
                break
            # (adapter, example) rows of this step, adapter by adapter; each adapter's loss is its
            # mean over its rows' targets.
            rows = [(i, j) for i in active for j in adapters[i].batches[step][1]]
            targets = torch.zeros(len(adapters), dtype=torch.float64)
            for i, j in rows:
                targets[i] += sum(adapters[i].examples[j].loss_mask[1:])
            loss_sums = torch.zeros(len(adapters), dtype=torch.float64)
            lengths = [len(adapters[i].examples[j].input_ids) for i, j in rows]
            weights = (1.0 / targets.clamp(min=1)).to(device)
            pending = pack_passes(lengths, max_batch_tokens=max_batch_tokens, max_rows=None if packed else 1)
            while pending:
                batch = pending.pop(0)
                owners = [rows[r][0] for r in batch]
                sizes = [lengths[r] for r in batch]
                ids, positions, loss_mask = pack_batch([adapters[i].examples[j] for i, j in (rows[r] for r in batch)], device)
                with self._routed(_runs(owners, sizes), sum(sizes), per_token=True):
                    log_probs, _ = token_log_probs(self.model, ids, None, loss_mask, position_ids=positions)
                owner_of = torch.repeat_interleave(torch.tensor(owners), torch.tensor(sizes)).to(device)
                owner_of = owner_of[1:][loss_mask[0, 1:]]  # the adapter of each target token
                nll = torch.zeros(len(adapters), device=device, dtype=log_probs.dtype).index_add(0, owner_of, -log_probs)
                finite = bool(torch.isfinite(nll).all())
                if not finite and len(set(owners)) > 1:
                    # A non-finite value in one sequence poisons every sequence packed with it
                    # (attention multiplies it by zero weights: 0 * inf = NaN), so redo this pass
                    # one adapter at a time; the failing adapter is dropped below, the others go on.
                    pending[:0] = [[r for r in batch if rows[r][0] == k] for k in dict.fromkeys(owners)]
                    continue
                if finite:  # else nothing to learn: the pass's one adapter is dropped below
                    (nll * weights).sum().backward()
                loss_sums += nll.detach().double().cpu()
                stats.passes += 1
                stats.tokens += sum(sizes)
            for i in active:
                a = adapters[i]
                epoch = a.batches[step][0]
                loss_i = loss_sums[i].item() / targets[i].item()
                if not math.isfinite(loss_i):
                    live[i] = False  # not updated below: its views get no gradient
                    a.fail_step(loss_i, epoch)
                    a.result.seconds = time.perf_counter() - start
                    continue
                a.record_step(loss_i)
                if a.result.steps == len(a.batches):
                    a.result.seconds = time.perf_counter() - start
            for param, columns in zip(layer_params, grad_columns):
                if param.grad is None:  # no pass of the step could backpropagate
                    columns.zero_()
                else:
                    columns.copy_(param.grad.flatten(1))
                    param.grad = None
            for i, row in enumerate(table_rows):
                row.grad = grad_table[i] if live[i] and i in active else None
            clip_grad_norms_([[row] for row in table_rows], [a.config.max_grad_norm for a in adapters])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            stats.steps += 1
        self.model.eval()
        finite_rows = torch.isfinite(self.weights).all(dim=1).tolist()
        for a, finite in zip(adapters, finite_rows):
            if not finite and a.result.error is None:  # the last step can diverge after a finite loss
                a.result.error = DIVERGED.format(steps=a.result.steps)
        stats.seconds = time.perf_counter() - start
        self.results = [a.result for a in adapters]


@contextmanager
def adapted_many(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    plans: Sequence[TrainingPlan],
    *,
    max_batch_tokens: int | None = None,
    progress: bool = False,
) -> Iterator[MultiAdaptation]:
    """Attach one fresh LoRA adapter per plan, train them together and yield the adapted model.

    Adapter i is trained on ``plans[i]`` as ``adapted(model, tokenizer, plan.examples, plan.config)``
    would train it alone (the same :class:`~seal_env.inner_loop.PreparedUpdate`, initialisation,
    loss, clipping and optimiser), up to floating-point rounding. All configs must share
    :func:`lora_structure` (rank, target modules, dropout); group plans by it otherwise.
    ``run.results[i].error`` is set for an adapter that had no usable examples, hit a non-finite loss
    (it stopped there; the others went on) or diverged.

    Inside the block, evaluate with ``run.route(owners)`` set. On exit (also after an exception)
    the adapters are removed and ``requires_grad`` flags and train/eval mode restored; base weights
    are never written. The caller's random state is left as it was.

    Args:
        max_batch_tokens: tokens packed into one forward/backward pass (default:
            :func:`default_max_batch_tokens` of the model's device); a longer sequence gets a pass alone.
        progress: show a progress bar over optimiser steps.
    """
    if not plans:
        raise ValueError("adapted_many needs at least one training plan")
    configs = [plan.config for plan in plans]
    structures = {lora_structure(config) for config in configs}
    if len(structures) > 1:
        raise ValueError(
            f"adapters trained together must share rank, target modules and dropout; got {sorted(structures, key=str)}"
        )
    device = next(model.parameters()).device
    if max_batch_tokens is None:
        max_batch_tokens = default_max_batch_tokens(device)
    initial = [_initial_weights(model, tokenizer, config) for config in configs]
    packed = _keeps_packed_sequences_apart(model)
    if not packed:
        warnings.warn(
            f"{type(model).__name__} does not keep sequences packed into one row apart (position_ids "
            "restarting at 0, no attention mask); multi_lora trains one sequence per pass instead (slower)",
            stacklevel=3,
        )
    routing = _Routing()
    layers: dict[str, MultiLoRALinear] = {}
    # Dropout draws from a fork of the caller's RNG seeded like adapted() seeds it (first plan's seed).
    with training_state_restored(model), seeded_rng(configs[0].seed, device):
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            weights, views = _weight_table(initial, device)
            for name, (lora_A, lora_B) in views.items():
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                scalings = [w[name][2] for w in initial]
                layers[name] = MultiLoRALinear(getattr(parent, child), lora_A, lora_B, scalings, configs[0].dropout, routing)
                setattr(parent, child, layers[name])
            run = MultiAdaptation(model, layers, routing, weights)
            run._train([prepare_update(tokenizer, plan) for plan in plans], max_batch_tokens=max_batch_tokens,
                       packed=packed, progress=progress)
            yield run
        finally:
            for name, layer in layers.items():
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, layer.base)
