"""K adapters attached to one model, trained together (:func:`adapted_many`) and evaluated together."""

from __future__ import annotations

import math
import time
import warnings
import weakref
from contextlib import contextmanager
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
    training_state_restored,
)
from seal_env.lm import pack_batch, seeded_rng, token_log_probs
from seal_env.multi_lora.packing import PackingStats, default_max_batch_tokens, keeps_packed_sequences_apart, pack_passes
from seal_env.multi_lora.routing import MultiLoRALinear, Routing, Run, runs_of


def lora_structure(config: InnerLoopConfig) -> tuple:
    """What adapters trained together must share: rank, target modules and dropout.

    The other settings (learning rate, alpha, epochs, batch size, seed, ...) may differ per adapter.
    """
    targets = config.target_modules
    return (config.rank, targets if isinstance(targets, str) else tuple(sorted(targets)), config.dropout)


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


# ------------------------------------------------------------------------------------- training


class MultiAdaptation:
    """Yielded by :func:`adapted_many`: the model with K trained adapters (valid only inside the
    ``with`` block), one :class:`~seal_env.inner_loop.TrainResult` per adapter and the packing stats.

    ``result.seconds`` of adapter i is the wall time from the start of the joint training until
    adapter i finished (its last step or its failure).
    """

    def __init__(self, model: PreTrainedModel, layers: dict[str, MultiLoRALinear], routing: Routing, weights: torch.Tensor):
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
        with self._routed(runs_of(owners, [1] * len(owners)), covers, per_token=False):
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
        # adapter: its own learning rate, weight decay and step count), not one per layer, because
        # AdamW and clipping pay a per-tensor overhead (README, "Performance"). After the passes of a step each
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
                with self._routed(runs_of(owners, sizes), sum(sizes), per_token=True):
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
    packed = keeps_packed_sequences_apart(model)
    if not packed:
        warnings.warn(
            f"{type(model).__name__} does not keep sequences packed into one row apart (position_ids "
            "restarting at 0, no attention mask); multi_lora trains one sequence per pass instead (slower)",
            stacklevel=3,
        )
    routing = Routing()
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
