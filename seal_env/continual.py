"""Continual knowledge incorporation: contexts learnt one after another into one model.

The SEAL paper's continual setting (§5, "catastrophic forgetting"): a stream of passages is
incorporated in sequence. Each update trains a LoRA adapter with the environment's inner loop and
merges it into the weights before the next one, so later updates start from a model that has already
learnt the earlier passages. After every update the model is scored on the passage just learnt and on
all earlier ones; step 0 scores the un-updated model on the whole stream. The scores form a lower-
triangular ``(N + 1) x N`` matrix (:func:`forgetting_matrix`) whose columns show how much of a
passage survives later updates.

An environment's contract is that its (shared) inner model never changes, so updates are merged into
a private copy (:class:`ContinualLearner`). The copy costs one more set of weights in memory.

Usage::

    env = KnowledgeIncorporationEnv(passages, include_passage=True)
    steps = run_continual(env, [0, 1, 2], lambda learner, i: env.self_edit_to_examples(edits[i], env.contexts[i]))
    matrix = forgetting_matrix(steps, "log_likelihood")
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Collection, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from seal_env.env import Evaluation, SelfAdaptEnv
from seal_env.inner_loop import InnerLoopConfig, TrainResult, adapted
from seal_env.lm import TrainingExample


class ContinualLearner:
    """A private copy of an environment's inner model into which updates are merged one by one.

    Args:
        env: supplies the model to copy, its tokenizer, its evaluation and (by default) its
            inner-loop settings. ``env.model`` itself is never modified.
        inner_loop: settings of each update (default: ``env.inner_loop``).
    """

    def __init__(self, env: SelfAdaptEnv, inner_loop: InnerLoopConfig | None = None):
        self.env = env
        self.inner_loop = inner_loop or env.inner_loop
        self.model = copy.deepcopy(env.model).eval()
        self.learnt: list[int] = []
        """Indices of the contexts incorporated so far, in order (failed updates included)."""

    def incorporate(self, examples: Sequence[TrainingExample], index: int) -> TrainResult:
        """Train a fresh LoRA adapter on ``examples`` and merge it into this learner's weights.

        ``index`` names the context learnt (bookkeeping only). When training fails (a non-finite
        loss; see ``result.error``) nothing is merged and the weights stay as they were.
        """
        with adapted(self.model, self.env.tokenizer, examples, self.inner_loop) as run:
            if run.result.error is None:
                # merge_adapter() adds the LoRA product to the base weights in place; the unload()
                # that ends adapted() then drops the LoRA layers without subtracting it again.
                run.model.merge_adapter()
        self.learnt.append(index)
        return run.result

    @torch.no_grad()
    def evaluate(self, index: int) -> Evaluation:
        """The environment's evaluation of context ``index`` on this learner's current weights."""
        return self.env.evaluate(self.model, self.env.contexts[index])


@dataclass
class ContinualStep:
    """One row of a continual run.

    Step 0 is the un-updated model scored on every context of the stream; step ``r >= 1`` learnt
    ``stream[r - 1]`` and scored ``stream[0..r-1]``.
    """

    step: int
    learnt: int | None
    """Context index learnt at this step (``None`` for step 0)."""
    scored: list[int]
    """Context indices scored after the step, in stream order."""
    metrics: list[dict[str, float]]
    """The evaluation metrics of each scored context."""
    items: list[list[dict[str, Any]]] = field(default_factory=list)
    """Per-question detail of each scored context (predictions and scores)."""
    train: dict[str, Any] | None = None
    """Summary of the update (loss, steps, seconds, error); ``None`` for step 0."""
    seconds: float = 0.0
    """Wall-clock seconds of the update and the evaluations."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ContinualStep":
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def run_continual(
    env: SelfAdaptEnv,
    stream: Sequence[int],
    examples_for: Callable[[ContinualLearner, int], Sequence[TrainingExample]],
    *,
    done_steps: Collection[int] = (),
    on_step: Callable[[ContinualStep], None] | None = None,
    inner_loop: InnerLoopConfig | None = None,
    progress: bool = True,
) -> list[ContinualStep]:
    """Incorporate the contexts ``stream`` (indices into ``env.contexts``) one after another.

    Args:
        env: the environment whose model (copied, never modified), evaluation and settings are used.
        stream: context indices in the order they are learnt.
        examples_for: training examples for context ``i``; it receives the learner, so a self-edit
            may be written by the current (already updated) model, as in the paper.
        done_steps: steps already recorded by an earlier, interrupted run. Their updates are
            replayed (training is seeded, so the weights come out the same) but neither evaluated
            nor reported; nothing is trained past the last step still to do.
        on_step: called with every finished step (to log it as soon as it exists).
        inner_loop: update settings (default: ``env.inner_loop``).
        progress: show a progress bar.

    Returns the steps computed in this call (those not in ``done_steps``), in order.
    """
    if not stream:
        raise ValueError("run_continual needs a non-empty stream of context indices")
    if any(not 0 <= i < len(env.contexts) for i in stream):
        raise ValueError(f"stream indices must lie in [0, {len(env.contexts)})")
    todo = [s for s in range(len(stream) + 1) if s not in done_steps]
    if not todo:
        return []
    learner = ContinualLearner(env, inner_loop)
    steps: list[ContinualStep] = []
    for step in tqdm(range(todo[-1] + 1), desc="continual steps", disable=not progress, leave=False):
        start = time.perf_counter()
        train = None
        if step > 0:
            train = learner.incorporate(examples_for(learner, stream[step - 1]), stream[step - 1]).summary()
        if step not in todo:
            continue
        scored = list(stream) if step == 0 else list(stream[:step])
        evaluations = [learner.evaluate(i) for i in scored]
        record = ContinualStep(
            step=step,
            learnt=None if step == 0 else stream[step - 1],
            scored=scored,
            metrics=[dict(e.metrics) for e in evaluations],
            items=[e.items for e in evaluations],
            train=train,
            seconds=time.perf_counter() - start,
        )
        steps.append(record)
        if on_step is not None:
            on_step(record)
    return steps


def forgetting_matrix(steps: Sequence[ContinualStep], metric: str) -> np.ndarray:
    """The ``(N + 1) x N`` matrix of ``metric``: row ``r`` holds the scores after step ``r`` on the
    stream's contexts in order, NaN where a context was not scored (not yet learnt).

    ``steps`` must hold every step ``0..N`` of one run (in any order).
    """
    by_step = {s.step: s for s in steps}
    n = len(by_step.get(0).scored) if 0 in by_step else None
    if n is None or sorted(by_step) != list(range(n + 1)):
        raise ValueError("forgetting_matrix needs steps 0..N of one run, step 0 scoring the whole stream")
    matrix = np.full((n + 1, n), np.nan)
    for step in by_step.values():
        for column, metrics in enumerate(step.metrics):
            matrix[step.step, column] = metrics[metric]
    return matrix
