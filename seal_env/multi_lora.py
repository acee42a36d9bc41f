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
* **Optimiser.** One ``torch.optim.AdamW`` with one parameter group per adapter (its own learning rate
  and weight decay) over views of that adapter's slices of the stacked weights. AdamW is elementwise,
  so this equals K separate optimisers; an adapter with no rows in a step has no gradient and is
  skipped (its step count stays its own).
* **Clipping.** Each adapter's gradient is clipped by its own norm, as ``train_lora`` clips the one
  adapter it trains.
* **Order and initialisation.** Adapter i sees its examples in the order ``train_lora`` would use
  (the same seeded permutation per epoch) and starts from the weights PEFT draws in ``adapted()``
  with the same config (same seed), so K adapters trained together match K sequential ``adapted()``
  runs up to floating-point rounding (``tests/test_multi_lora.py`` states the tolerance).

Scheduling: optimiser step t trains mini-batch t of every adapter that still has one; an adapter
that has finished simply has no rows in later steps. The rows of a step are sorted by length and cut
into micro-batches (gradients accumulate over them) chosen by a small dynamic programme that trades
padding against the fixed cost of an extra pass, so self-edits of different lengths share passes with
little padding (:class:`PackingStats` reports the padding fraction).

Why not PEFT: PEFT's mixed-adapter batches (``adapter_names=``) work for inference only (it refuses
them in training mode) and loop over adapters with fancy indexing; training K adapters per row needs
the routing above, written here in plain PyTorch.

Usage::

    jobs = [(examples_0, InnerLoopConfig()), (examples_1, InnerLoopConfig())]
    with adapted_many(model, tokenizer, jobs) as run:
        print([r.final_loss for r in run.results], run.stats.padding_fraction)
        with run.route([0, 0, 1]), torch.no_grad():  # rows 0, 1 -> adapter 0; row 2 -> adapter 1
            logits = run.model(input_ids=ids).logits
"""

from __future__ import annotations

import math
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as PeftLoraLinear
from peft.tuners.lora import LoraLayer
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from seal_env.inner_loop import InnerLoopConfig, TrainResult, adamw, adapted, clip_grad_norms_
from seal_env.lm import TokenizedExample, TrainingExample, pad_batch, token_log_probs, tokenize_example

Job = tuple[Sequence[TrainingExample], InnerLoopConfig]
"""One adapter's work: its training examples and its inner-loop settings."""

DEFAULT_MAX_BATCH_TOKENS = 4096
"""Padded tokens per forward/backward pass (bounds activation memory); a longer row gets a pass alone."""


def lora_structure(config: InnerLoopConfig) -> tuple:
    """What adapters trained together must share: rank, target modules and dropout.

    The other settings (learning rate, alpha, epochs, batch size, seed, ...) may differ per adapter.
    """
    targets = config.target_modules
    return (config.rank, targets if isinstance(targets, str) else tuple(sorted(targets)), config.dropout)


def default_pass_overhead_tokens(device: torch.device) -> int:
    """The cost of one more forward/backward pass, in padded tokens, for micro-batch packing.

    On a CPU a pass costs about its tokens plus a little Python/dispatch time, so splitting a step
    into length-sorted passes pays even for short rows; on a GPU a pass over a few hundred tokens
    costs about as much as one over a few, so passes are split only for a lot of padding.
    """
    return 1024 if device.type == "cuda" else 32


# ---------------------------------------------------------------------------------------- layers


@dataclass
class _Routing:
    """Which adapter each batch row goes through, shared by all layers of one model.

    ``runs`` lists ``(adapter, first_row, end_row)`` for consecutive rows with the same adapter;
    ``n_rows`` is the batch size they cover (``None``: one adapter for any batch size);
    ``run_adapters`` holds the runs' adapters as a tensor on the model's device;
    ``all_adapters_in_order`` says they are 0, 1, ..., K-1 (the stacked weights serve as they are).
    """

    runs: list[tuple[int, int, int]] | None = None
    n_rows: int | None = None
    run_adapters: torch.Tensor | None = None
    all_adapters_in_order: bool = False


class MultiLoRALinear(torch.nn.Module):
    """A frozen ``nn.Linear`` plus K LoRA pairs; each batch row uses the pair of its adapter.

    ``y = base(x) + B[k] @ (scaling[k] * A[k] @ dropout(x))`` for a row owned by adapter ``k``; the
    LoRA branch runs in the adapters' dtype (float32), as in PEFT. The K pairs are stored stacked,
    ``lora_A`` ``[K, r, in]`` and ``lora_B`` ``[K, out, r]``, so a pass over all adapters uses them
    as they are (no per-pass stacking, one dense gradient per layer instead of K small ones to
    accumulate). Rows are routed in runs of consecutive rows (a batch sorted by adapter has one run
    per adapter). Runs of equal length (the usual case: every adapter contributes ``batch_size``
    rows, or one passage's questions) go through two batched matmuls, the second fused with the
    addition to the base output; otherwise each run costs two small matmuls.
    """

    def __init__(
        self,
        base: torch.nn.Linear,
        weights: Sequence[tuple[torch.Tensor, torch.Tensor]],
        scalings: Sequence[float],
        dropout: float,
        routing: _Routing,
    ):
        super().__init__()
        self.base = base
        self.lora_A = torch.nn.Parameter(torch.stack([a for a, _ in weights]))
        self.lora_B = torch.nn.Parameter(torch.stack([b for _, b in weights]))
        self.scalings = list(scalings)
        self.register_buffer("scaling_tensor", torch.tensor(self.scalings, dtype=self.lora_A.dtype, device=base.weight.device))
        self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()
        self.routing = routing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        runs, n_rows = self.routing.runs, self.routing.n_rows
        if runs is None:
            raise RuntimeError("MultiLoRALinear needs a route: run the model inside `with run.route(owners):`")
        if n_rows is not None and x.shape[0] != n_rows:
            raise RuntimeError(f"the route covers {n_rows} rows but the batch has {x.shape[0]}")
        lora_x = self.dropout(x.to(self.lora_A.dtype))
        base = result.to(lora_x.dtype)

        def plus_lora(adapter: int, rows: torch.Tensor, base_rows: torch.Tensor) -> torch.Tensor:
            # Scaling the rank-r intermediate (not the output, as PEFT does) costs out/r times less.
            hidden = F.linear(rows, self.lora_A[adapter]) * self.scalings[adapter]
            return torch.addmm(base_rows.flatten(0, -2), hidden.flatten(0, -2), self.lora_B[adapter].T).view_as(base_rows)

        if len(runs) == 1:
            out = plus_lora(runs[0][0], lora_x, base)
        elif len({end - start for _, start, end in runs}) == 1:
            if self.routing.all_adapters_in_order:
                a, b, scalings = self.lora_A, self.lora_B, self.scaling_tensor
            else:
                # index_select, not A[chosen]: its backward (index_add_) is ~6x faster on a CPU
                # than advanced indexing's (index_put_ with accumulation), measured at K=8.
                chosen = self.routing.run_adapters
                a, b, scalings = (t.index_select(0, chosen) for t in (self.lora_A, self.lora_B, self.scaling_tensor))
            grouped = lora_x.reshape(len(runs), -1, lora_x.shape[-1])  # [runs, rows per run * positions, in]
            hidden = torch.bmm(grouped, a.transpose(1, 2)) * scalings[:, None, None]
            out = torch.baddbmm(base.reshape(len(runs), -1, base.shape[-1]), hidden, b.transpose(1, 2)).view_as(result)
        else:
            out = torch.cat([plus_lora(k, lora_x[start:end], base[start:end]) for k, start, end in runs])
        return out.to(result.dtype)

    def adapter_tensors(self, adapter: int) -> list[tuple[torch.Tensor, torch.nn.Parameter]]:
        """``(weight, stacked)`` pairs of one adapter: its A and B as views into the stacked
        parameters (written in place, e.g. by an optimiser), each with the parameter it slices."""
        return [(stacked.detach()[adapter], stacked) for stacked in (self.lora_A, self.lora_B)]


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


# ----------------------------------------------------------------------------------- packing


def pack_rows(lengths: Sequence[int], *, max_batch_tokens: int, pass_overhead_tokens: int) -> list[list[int]]:
    """Cut rows into micro-batches (lists of row positions) with little padding.

    Rows are sorted by length; a micro-batch is a run of that order padded to its longest row. The
    split minimises ``padded tokens + pass_overhead_tokens * passes`` (exact dynamic programme over
    the sorted order) subject to ``rows * longest <= max_batch_tokens`` (a row longer than that gets a
    pass alone).
    """
    order = sorted(range(len(lengths)), key=lambda r: -lengths[r])
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[j]: cost of packing order[:j]
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(end - 1, -1, -1):
            padded = (end - start) * lengths[order[start]]  # order is longest first
            if padded > max_batch_tokens and end - start > 1:
                break
            cost = best[start] + padded + pass_overhead_tokens
            if cost < best[end]:
                best[end], cut[end] = cost, start
    batches, end = [], n
    while end > 0:
        batches.append(order[cut[end] : end])
        end = cut[end]
    return batches[::-1]


@dataclass
class PackingStats:
    """How the joint training of one :func:`adapted_many` call was batched."""

    adapters: int = 0
    steps: int = 0
    """Optimiser steps (each trains one mini-batch of every adapter that still has one)."""
    passes: int = 0
    """Forward/backward passes (micro-batches)."""
    tokens: int = 0
    """Tokens of the training rows, all epochs."""
    padded_tokens: int = 0
    """Tokens the passes computed, padding included."""
    loss_tokens: int = 0
    """Tokens that carried loss, all epochs."""
    seconds: float = 0.0

    @property
    def padding_fraction(self) -> float:
        """Share of computed tokens that were padding."""
        return 1.0 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0


# ------------------------------------------------------------------------------------- training


@dataclass
class _Adapter:
    """Training state of one adapter."""

    config: InnerLoopConfig
    examples: list[TokenizedExample]
    batches: list[tuple[int, list[int]]]  # (epoch, example indices) per optimiser step, in order
    params: list[torch.nn.Parameter] = field(default_factory=list)
    result: TrainResult = field(default_factory=TrainResult)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.examples) / self.config.batch_size)


def _prepare(tokenizer: PreTrainedTokenizerBase, examples: Sequence[TrainingExample], config: InnerLoopConfig) -> _Adapter:
    """Tokenise, filter and order one adapter's examples exactly as ``train_lora`` does."""
    tokenized = [
        tokenize_example(tokenizer, e, max_tokens=config.max_tokens_per_example, loss_on=config.loss_on)
        for e in examples
    ]
    tokenized = [t for t in tokenized if sum(t.loss_mask[1:]) > 0]
    result = TrainResult(
        n_examples=len(tokenized),
        n_truncated=sum(t.truncated for t in tokenized),
        n_train_tokens=sum(len(t.input_ids) for t in tokenized),
        n_loss_tokens=sum(sum(t.loss_mask[1:]) for t in tokenized),
    )
    if not tokenized:
        result.error = "no training examples with at least one target token"
    shuffle = torch.Generator().manual_seed(config.seed)
    batches = []
    for epoch in range(config.epochs if tokenized else 0):
        order = torch.randperm(len(tokenized), generator=shuffle).tolist()
        batches += [(epoch, order[first : first + config.batch_size]) for first in range(0, len(order), config.batch_size)]
    return _Adapter(config, tokenized, batches, result=result)


class MultiAdaptation:
    """Yielded by :func:`adapted_many`: the model with K trained adapters (valid only inside the
    ``with`` block), one :class:`~seal_env.inner_loop.TrainResult` per adapter and the packing stats.

    ``result.seconds`` of adapter i is the wall time from the start of the joint training until
    adapter i finished (its last step or its failure).
    """

    def __init__(self, model: PreTrainedModel, layers: dict[str, MultiLoRALinear], routing: _Routing, num_adapters: int):
        self.model = model
        self.num_adapters = num_adapters
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
            owners, n_rows = [owners], None
        else:
            owners, n_rows = [int(o) for o in owners], len(owners)
        if not owners:
            raise ValueError("route needs at least one row")
        bad = [o for o in owners if not 0 <= o < self.num_adapters]
        if bad:
            raise ValueError(f"adapter indices must be in [0, {self.num_adapters}), got {bad[0]}")
        runs, start = [], 0
        for row in range(1, len(owners) + 1):
            if row == len(owners) or owners[row] != owners[start]:
                runs.append((owners[start], start, row))
                start = row
        routing = self._routing
        previous = (routing.runs, routing.n_rows, routing.run_adapters, routing.all_adapters_in_order)
        run_adapters = [k for k, _, _ in runs]
        routing.runs, routing.n_rows = runs, n_rows
        routing.run_adapters = torch.tensor(run_adapters, device=self._device)
        routing.all_adapters_in_order = run_adapters == list(range(self.num_adapters))
        try:
            yield
        finally:
            routing.runs, routing.n_rows, routing.run_adapters, routing.all_adapters_in_order = previous

    def lora_weights(self, adapter: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Adapter ``adapter``'s ``(A, B)`` per adapted module, named as in the base model (the
        names PEFT's ``get_base_model().named_modules()`` gives its LoRA layers)."""
        return {name: (layer.lora_A[adapter].detach(), layer.lora_B[adapter].detach()) for name, layer in self.layers.items()}

    # ----------------------------------------------------------------------------- training

    def _train(
        self,
        adapters: list[_Adapter],
        pad_id: int,
        *,
        max_batch_tokens: int,
        pass_overhead_tokens: int,
        progress: bool,
    ) -> None:
        start = time.perf_counter()
        stats = self.stats
        stats.adapters = len(adapters)
        # The optimiser sees each adapter's weights as views into the stacked parameters (one group
        # per adapter: its own learning rate, weight decay and step count); before each step a
        # view's gradient is pointed at its slice of the stacked gradient, or None to skip it.
        stacked_params = [p for layer in self.layers.values() for p in (layer.lora_A, layer.lora_B)]
        tensors = [[pair for layer in self.layers.values() for pair in layer.adapter_tensors(index)] for index in range(len(adapters))]
        for a, pairs in zip(adapters, tensors):
            a.params = [view for view, _ in pairs]
        optimizer = adamw(
            [{"params": a.params, "lr": a.config.learning_rate, "weight_decay": a.config.weight_decay} for a in adapters]
        )
        device = next(self.model.parameters()).device
        live = [a.result.error is None for a in adapters]
        total_steps = max((len(a.batches) for a in adapters), default=0)
        self.model.train()
        for step in tqdm(range(total_steps), desc=f"training {len(adapters)} adapters", disable=not progress, leave=False):
            active = [i for i, a in enumerate(adapters) if live[i] and step < len(a.batches)]
            if not active:
                break
            # (adapter, example) rows of this step; each adapter's loss is its mean over its rows' targets.
            rows = [(i, j) for i in active for j in adapters[i].batches[step][1]]
            targets = torch.zeros(len(adapters), dtype=torch.float64)
            for i, j in rows:
                targets[i] += sum(adapters[i].examples[j].loss_mask[1:])
            stats.loss_tokens += int(targets.sum())
            loss_sums = torch.zeros(len(adapters), dtype=torch.float64)
            lengths = [len(adapters[i].examples[j].input_ids) for i, j in rows]
            for batch in pack_rows(lengths, max_batch_tokens=max_batch_tokens, pass_overhead_tokens=pass_overhead_tokens):
                batch.sort(key=lambda r: rows[r][0])  # rows of one adapter side by side: one run each
                owners = [rows[r][0] for r in batch]
                examples = [adapters[i].examples[j] for i, j in (rows[r] for r in batch)]
                ids, attention, loss_mask = pad_batch(examples, pad_id, device)
                with self.route(owners):
                    log_probs, row_of = token_log_probs(self.model, ids, attention, loss_mask)
                owner_of = torch.tensor(owners, device=device)[row_of]
                nll = torch.zeros(len(adapters), device=device).index_add(0, owner_of, -log_probs)
                finite = torch.isfinite(nll)
                # A non-finite adapter is dropped below; keep its NaN out of the sum the others share.
                weights = (1.0 / targets.clamp(min=1)).to(device=device, dtype=nll.dtype)
                loss = (torch.where(finite, nll, 0.0) * weights).sum()
                loss.backward()
                loss_sums += nll.detach().double().cpu()
                stats.passes += 1
                stats.tokens += int(attention.sum())
                stats.padded_tokens += attention.numel()
            for i in active:
                a = adapters[i]
                epoch = a.batches[step][0]
                loss_i = loss_sums[i].item() / targets[i].item()
                if not math.isfinite(loss_i):
                    live[i] = False  # not updated below: its views get no gradient
                    a.result.error = f"non-finite training loss ({loss_i}) at epoch {epoch + 1}, step {a.result.steps + 1}"
                    a.result.seconds = time.perf_counter() - start
                    continue
                a.result.losses.append(loss_i)
                a.result.steps += 1
                if a.result.steps % a.steps_per_epoch == 0:
                    a.result.epoch_losses.append(sum(a.result.losses[-a.steps_per_epoch :]) / a.steps_per_epoch)
                if a.result.steps == len(a.batches):
                    a.result.seconds = time.perf_counter() - start
            for i, pairs in enumerate(tensors):
                updated = live[i] and i in active
                for view, stacked in pairs:
                    view.grad = stacked.grad[i] if updated and stacked.grad is not None else None
            clip_grad_norms_([a.params for a in adapters], [a.config.max_grad_norm for a in adapters])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for p in stacked_params:
                p.grad = None
            stats.steps += 1
        self.model.eval()
        stats.seconds = time.perf_counter() - start
        self.results = [a.result for a in adapters]


@contextmanager
def adapted_many(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    jobs: Sequence[Job],
    *,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    pass_overhead_tokens: int | None = None,
    progress: bool = False,
) -> Iterator[MultiAdaptation]:
    """Attach one fresh LoRA adapter per job, train them together and yield the adapted model.

    Adapter i is trained on ``jobs[i] = (examples, config)`` as ``adapted(model, tokenizer, examples,
    config)`` would train it alone (same initialisation, order, loss, clipping and optimiser), up to
    floating-point rounding. All configs must share :func:`lora_structure` (rank, target modules,
    dropout); group jobs by it otherwise. ``run.results[i].error`` is set for an adapter that had
    no usable examples or hit a non-finite loss (it stopped there; the others went on).

    Inside the block, evaluate with ``run.route(owners)`` set. On exit (also after an exception)
    the adapters are removed and ``requires_grad`` flags and train/eval mode restored; base weights
    are never written. The caller's random state is left as it was.

    Args:
        max_batch_tokens: padded tokens per forward/backward pass (memory bound).
        pass_overhead_tokens: the cost of an extra pass in tokens, used to trade padding against
            passes (default: :func:`default_pass_overhead_tokens` of the model's device).
        progress: show a progress bar over optimiser steps.
    """
    if not jobs:
        raise ValueError("adapted_many needs at least one job")
    structures = {lora_structure(config) for _, config in jobs}
    if len(structures) > 1:
        raise ValueError(
            f"adapters trained together must share rank, target modules and dropout; got {sorted(structures, key=str)}"
        )
    device = next(model.parameters()).device
    if pass_overhead_tokens is None:
        pass_overhead_tokens = default_pass_overhead_tokens(device)
    initial = [_initial_weights(model, tokenizer, config) for _, config in jobs]
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    routing = _Routing()
    layers: dict[str, MultiLoRALinear] = {}
    # Dropout draws from a fork of the caller's RNG seeded like adapted() seeds it (first job's seed).
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(jobs[0][1].seed)
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            for name in initial[0]:
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                layers[name] = MultiLoRALinear(
                    getattr(parent, child),
                    [(w[name][0].to(device), w[name][1].to(device)) for w in initial],
                    [w[name][2] for w in initial],
                    jobs[0][1].dropout,
                    routing,
                )
                setattr(parent, child, layers[name])
            run = MultiAdaptation(model, layers, routing, len(jobs))
            adapters = [_prepare(tokenizer, examples, config) for examples, config in jobs]
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            run._train(
                adapters,
                pad_id,
                max_batch_tokens=max_batch_tokens,
                pass_overhead_tokens=pass_overhead_tokens,
                progress=progress,
            )
            yield run
        finally:
            for name, layer in layers.items():
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, layer.base)
            for name, p in model.named_parameters():
                p.requires_grad_(requires_grad[name])
            model.train(was_training)
