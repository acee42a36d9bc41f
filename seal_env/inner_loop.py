"""The inner loop: a throw-away LoRA update on a self-edit's training examples.

:func:`adapted` attaches a fresh LoRA adapter (PEFT) to the model, trains it with a plain PyTorch loop
on examples held in memory, hands the adapted model to the caller for evaluation, and then removes
the adapter, leaving the base weights bit-identical. There is no Hugging Face ``Trainer`` and nothing
touches the disk: for a few dozen short sequences the Trainer's set-up, checkpointing and fixed-length
padding cost more than the training itself. Batches are padded only to their own longest sequence.

Usage::

    with adapted(model, tokenizer, examples, InnerLoopConfig()) as run:
        if run.result.error is None:
            score = evaluate(run.model)
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from seal_env.lm import TokenizedExample, TrainingExample, pad_batch, seeded_rng, token_log_probs, tokenize_example


@dataclass
class InnerLoopConfig:
    """Settings of one LoRA update.

    The defaults are tuned for the embedded 135M model on a CPU (rank 16 on every linear layer,
    learning rate 1e-3, 5 epochs at batch size 1; the README's "Inner loop" section has the
    measurement behind them); SEAL's own settings (:meth:`seal`) train twice as long for a 7B model
    on a GPU.
    """

    rank: int = 16
    """LoRA rank r."""
    alpha: float = 32.0
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: str | list[str] = "all-linear"
    """Modules that get adapters: PEFT's ``"all-linear"`` or a list of module names."""
    learning_rate: float = 1e-3
    """AdamW learning rate (constant)."""
    epochs: int = 5
    """Passes over the training examples (unused when ``max_steps`` is set)."""
    max_steps: int | None = None
    """When set, exactly this many optimiser steps per update, over as many seeded shuffled passes as
    they take (the last one cut short), whatever the number of examples: as in transformers'
    ``TrainingArguments.max_steps``, it overrides ``epochs``. A fixed budget keeps a self-edit's
    length from buying it optimiser steps."""
    batch_size: int = 1
    """Sequences per optimiser step."""
    max_tokens_per_example: int = 256
    """Longer examples are truncated (prompt start first)."""
    loss_on: str = "all"
    """``"all"`` tokens, or only the ``"completion"`` of each example."""
    max_grad_norm: float = 1.0
    """Gradient clipping; 0 disables it."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    seed: int = 0
    """Seeds the adapter's initialisation and the shuffling of examples."""

    def __post_init__(self) -> None:
        problems = []
        if self.rank < 1:
            problems.append(f"rank must be >= 1, got {self.rank}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            problems.append(f"learning_rate must be a positive finite number, got {self.learning_rate}")
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_tokens_per_example < 2:
            problems.append(f"max_tokens_per_example must be >= 2, got {self.max_tokens_per_example}")
        if self.loss_on not in ("all", "completion"):
            problems.append(f"loss_on must be 'all' or 'completion', got {self.loss_on!r}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise ValueError("invalid InnerLoopConfig: " + "; ".join(problems))

    @classmethod
    def seal(cls, **overrides) -> "InnerLoopConfig":
        """The SEAL paper's knowledge-incorporation settings: r=32, alpha=64, 10 epochs, lr 1e-3, batch 1."""
        return replace(cls(rank=32, alpha=64.0, epochs=10, learning_rate=1e-3, batch_size=1), **overrides)

    def lora_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        )

    def to_dict(self) -> dict:
        settings = asdict(self)
        if self.max_steps is None:
            # Absent when off, so that logs and runs written before the option existed still resume.
            del settings["max_steps"]
        return settings


@dataclass
class TrainResult:
    """What one LoRA update did."""

    n_examples: int = 0
    n_truncated: int = 0
    n_train_tokens: int = 0
    """Tokens in the training sequences (one epoch)."""
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    """Loss of every optimiser step, in order."""
    epoch_losses: list[float] = field(default_factory=list)
    """Mean step loss of every completed epoch."""
    seconds: float = 0.0
    error: str | None = None
    """Why training stopped early (a non-finite loss), else None."""

    @property
    def final_loss(self) -> float:
        """Mean loss of the last completed epoch (NaN before one completes)."""
        return self.epoch_losses[-1] if self.epoch_losses else float("nan")

    def summary(self) -> dict:
        """The JSON-safe headline of the update (no per-step losses; None for a loss never measured)."""
        return {
            "final_loss": self.final_loss if self.epoch_losses else None,
            "steps": self.steps,
            "n_examples": self.n_examples,
            "n_train_tokens": self.n_train_tokens,
            "seconds": self.seconds,
            "error": self.error,
        }


@dataclass
class TrainingPlan:
    """One LoRA update as asked for: training examples and inner-loop settings, plus notes for the
    step's ``info`` (e.g. settings that were clamped). What an environment makes of a self-edit."""

    examples: list[TrainingExample]
    config: InnerLoopConfig
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedUpdate:
    """One update ready to train: the tokenised examples that carry loss, the schedule of optimiser
    steps, and the :class:`TrainResult` that training fills in.

    The sequential loop (:func:`train_lora`) and the batched one (:mod:`seal_env.multi_lora`) both
    train from it, so they see the same examples in the same order by construction.
    """

    config: InnerLoopConfig
    examples: list[TokenizedExample]
    batches: list[tuple[int, list[int]]]
    """``(epoch, example indices)`` of every optimiser step, in order (a seeded shuffle per epoch)."""
    result: TrainResult

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.examples) / self.config.batch_size)

    def record_step(self, loss: float) -> None:
        """Count a finished optimiser step of loss ``loss`` (and its epoch's mean when it ends one)."""
        result = self.result
        result.losses.append(loss)
        result.steps += 1
        if result.steps % self.steps_per_epoch == 0:
            result.epoch_losses.append(sum(result.losses[-self.steps_per_epoch :]) / self.steps_per_epoch)

    def fail_step(self, loss: float, epoch: int) -> None:
        self.result.error = f"non-finite training loss ({loss}) at epoch {epoch + 1}, step {self.result.steps + 1}"


def prepare_update(tokenizer: PreTrainedTokenizerBase, plan: TrainingPlan) -> PreparedUpdate:
    """Tokenise ``plan``'s examples, drop those without a target token, and schedule the steps."""
    config = plan.config
    tokenized = [
        tokenize_example(tokenizer, e, max_tokens=config.max_tokens_per_example, loss_on=config.loss_on)
        for e in plan.examples
    ]
    tokenized = [t for t in tokenized if sum(t.loss_mask[1:]) > 0]  # nothing to learn from the rest
    result = TrainResult(
        n_examples=len(tokenized),
        n_truncated=sum(t.truncated for t in tokenized),
        n_train_tokens=sum(len(t.input_ids) for t in tokenized),
    )
    if not tokenized:
        result.error = "no training examples with at least one target token"
    update = PreparedUpdate(config, tokenized, [], result)
    shuffle = torch.Generator().manual_seed(config.seed)
    if not tokenized:
        passes = 0
    elif config.max_steps is None:
        passes = config.epochs
    else:
        passes = math.ceil(config.max_steps / update.steps_per_epoch)
    for epoch in range(passes):
        order = torch.randperm(len(tokenized), generator=shuffle).tolist()
        update.batches += [(epoch, order[first : first + config.batch_size]) for first in range(0, len(order), config.batch_size)]
    if config.max_steps is not None:
        del update.batches[config.max_steps :]  # the last pass cut short
    return update


@contextmanager
def training_state_restored(model: torch.nn.Module) -> Iterator[None]:
    """On exit, put back every parameter's ``requires_grad`` and the model's train/eval mode (PEFT and
    the batched loop change both)."""
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    try:
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad[name])
        model.train(was_training)


@dataclass
class Adaptation:
    """Yielded by :func:`adapted`: the adapted model (valid only inside the ``with`` block) and the
    training report."""

    model: PeftModel
    result: TrainResult


DIVERGED = "the update diverged: the adapter's weights are not finite after step {steps}"
"""``TrainResult.error`` of an update whose optimiser wrote NaN or infinite weights."""


def adamw(param_groups: list[dict]) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` (each with its ``params``, ``lr`` and ``weight_decay``).

    Fused (one kernel over all tensors) where torch has the kernel: the default per-tensor loop is a
    sizeable share of a short step over the ~400 LoRA tensors of the default model. Same arithmetic,
    so the same updates.
    """
    device = param_groups[0]["params"][0].device
    return torch.optim.AdamW(param_groups, fused=device.type in ("cpu", "cuda"))


@torch.no_grad()
def clip_grad_norms_(groups: Sequence[Sequence[torch.Tensor]], max_norms: Sequence[float]) -> None:
    """Clip each group's gradients by the group's own total 2-norm, as
    ``torch.nn.utils.clip_grad_norm_(group, max_norm)`` does for one group (same formula).

    Written out because ``clip_grad_norm_`` takes one norm per tensor in a Python loop on a CPU (its
    foreach path is CUDA-only); here one ``_foreach_norm`` covers every tensor of every group. A group
    with ``max_norm <= 0`` or no gradients is left alone.
    """
    clipped = []
    for group, max_norm in zip(groups, max_norms):
        grads = [p.grad for p in group if p.grad is not None]
        if grads and max_norm > 0:
            clipped.append((grads, max_norm))
    if not clipped:  # e.g. every adapter of a step failed: nothing to norm (foreach needs a tensor)
        return
    norms = torch._foreach_norm([g for grads, _ in clipped for g in grads])
    first = 0
    for group, max_norm in clipped:
        group_norms, first = norms[first : first + len(group)], first + len(group)
        total = torch.linalg.vector_norm(torch.stack(group_norms))
        torch._foreach_mul_(group, torch.clamp(max_norm / (total + 1e-6), max=1.0))


def train_lora(model: PeftModel, tokenizer: PreTrainedTokenizerBase, update: PreparedUpdate) -> TrainResult:
    """Train the model's active LoRA adapter in place on a prepared update; stops at the first
    non-finite loss (``result.error``)."""
    start = time.perf_counter()
    result = update.result
    if result.error:
        return result
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw([{"params": params, "lr": update.config.learning_rate, "weight_decay": update.config.weight_decay}])
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.train()
    for epoch, indices in update.batches:
        batch = [update.examples[i] for i in indices]
        log_probs, _ = token_log_probs(model, *pad_batch(batch, pad_id, device))
        loss = -log_probs.mean()
        if not torch.isfinite(loss):
            update.fail_step(loss.item(), epoch)
            optimizer.zero_grad(set_to_none=True)
            break
        loss.backward()
        clip_grad_norms_([params], [update.config.max_grad_norm])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update.record_step(loss.item())
    model.eval()
    if result.error is None and not all(bool(torch.isfinite(p).all()) for p in params):
        result.error = DIVERGED.format(steps=result.steps)  # the last step can diverge after a finite loss
    result.seconds = time.perf_counter() - start
    return result


@contextmanager
def adapted(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[TrainingExample],
    config: InnerLoopConfig | None = None,
) -> Iterator[Adaptation]:
    """Attach a fresh LoRA adapter, train it on ``examples`` and yield the adapted model.

    On exit (also after an exception) the adapter is removed and the model's ``requires_grad`` flags
    and train/eval mode are restored; base weights are never written, so they stay bit-identical.
    Check ``result.error`` before evaluating: after a non-finite loss the adapter holds garbage.
    The random state of the caller is left as it was (initialisation draws from a forked RNG seeded
    with ``config.seed``).
    """
    config = config or InnerLoopConfig()
    if isinstance(model, PeftModel):
        raise TypeError("adapted() needs a plain model; merge or unload the PEFT adapter first")
    update = prepare_update(tokenizer, TrainingPlan(list(examples), config))
    with training_state_restored(model), seeded_rng(config.seed, next(model.parameters()).device):
        with warnings.catch_warnings():
            # PEFT calls a Transformers method deprecated in v5; the warning would repeat on every step.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, config.lora_config())
        try:
            yield Adaptation(peft_model, train_lora(peft_model, tokenizer, update))
        finally:
            peft_model.unload()
