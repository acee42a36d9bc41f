"""SelfAdaptEnv: the Gymnasium contract for self-adaptation, and the step pipeline.

One episode is one context (a passage to learn, an ARC task to solve). The action is a *self-edit*,
text the environment turns into training data and settings. ``step()`` runs

    validate -> plan training (subclass) -> LoRA update (inner loop) -> evaluate (subclass) -> reward

and restores the inner model, whose base weights are never written. The reward is exactly 1.0 when
the adapted model's score beats the baseline's by more than ``reward_margin``, else 0.0.

A new task subclasses :class:`SelfAdaptEnv` and overrides four methods:

* :meth:`~SelfAdaptEnv.render_prompt` – the observation's ``prompt`` for a context;
* :meth:`~SelfAdaptEnv.self_edit_to_examples` – self-edit -> training examples (raise
  :class:`SelfEditError` for unusable ones), or :meth:`~SelfAdaptEnv.plan_training` to also choose
  the training settings;
* :meth:`~SelfAdaptEnv.evaluate` – score a (possibly adapted) model on a context;
* optionally :meth:`~SelfAdaptEnv.render_context` and :meth:`~SelfAdaptEnv.baseline_plan`.
"""

from __future__ import annotations

import math
import operator
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Generic, Sequence, TypeVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from seal_env.data_files import unusable_character
from seal_env.inner_loop import InnerLoopConfig, TrainingPlan, TrainResult, adapted
from seal_env.lm import TrainingExample
from seal_env.models import load_model
from seal_env.spaces import Seconds, UnicodeText
from seal_env.multi_lora import adapted_many, lora_structure

ContextT = TypeVar("ContextT")

DEFAULT_MAX_SELF_EDIT_CHARS = 16_000
_OBSERVATION_MAX_CHARS = 1_000_000


class SelfEditError(ValueError):
    """A self-edit the environment cannot use. ``step()`` turns it into reward 0.0 and ``info["error"]``."""


class BaselineError(RuntimeError):
    """The baseline of a context could not be measured (its update diverged, say). ``step()`` turns it
    into reward 0.0 and ``info["error"]``."""


@dataclass
class Evaluation:
    """A model's result on one context: the reward metric's value, all metrics, per-item detail."""

    score: float
    metrics: dict[str, float]
    items: list[dict[str, Any]] = field(default_factory=list)


def non_finite_values(evaluation: Evaluation) -> list[str]:
    """Names of the evaluation's numbers (score, metrics, per-item values) that are NaN or infinite."""
    named = [("score", evaluation.score)] + [(f"metrics.{k}", v) for k, v in evaluation.metrics.items()]
    named += [(f"items[{i}].{k}", v) for i, item in enumerate(evaluation.items) for k, v in item.items()]
    return [name for name, value in named if isinstance(value, float) and not math.isfinite(value)]


def check_self_edit_text(self_edit: Any, max_chars: int) -> str | None:
    """Why a self-edit cannot be used as text, or None when it can."""
    if not isinstance(self_edit, str):
        return f"self-edit must be a str, got {type(self_edit).__name__}"
    if len(self_edit) > max_chars:
        return f"self-edit is {len(self_edit)} characters long; the limit is {max_chars}"
    if not self_edit.strip():
        return "self-edit is empty or whitespace only"
    problem = unusable_character(self_edit)
    return None if problem is None else f"self-edit contains {problem}"


def context_index(value: Any, n_contexts: int) -> int:
    """``value`` as an index into ``n_contexts`` contexts: any integer type (numpy's too), not a bool."""
    problem = f"options['index'] must be an int in [0, {n_contexts}), got {value!r}"
    if isinstance(value, (bool, np.bool_)):  # a bool is an int in Python, but never meant as an index
        raise ValueError(problem)
    try:
        index = operator.index(value)
    except TypeError:
        raise ValueError(problem) from None
    if not 0 <= index < n_contexts:
        raise ValueError(problem)
    return index


@dataclass(frozen=True)
class PreparedStep:
    """A step up to its update: the context, its baseline, and the self-edit's training plan; ``plan``
    is None when the self-edit (or the baseline) is unusable, and ``error`` says why."""

    context_index: int
    baseline: Evaluation | None
    plan: TrainingPlan | None
    error: str | None = None


@dataclass(frozen=True)
class StepResult:
    """What one step returns besides the observation: its reward and its ``info``."""

    context_index: int
    reward: float
    info: dict[str, Any]


class SelfAdaptEnv(gym.Env[dict, str], Generic[ContextT]):
    """Base class of self-adaptation environments (one context per episode, one step per episode).

    Args:
        contexts: the contexts episodes draw from.
        model: ``None`` for the embedded default model, a Hugging Face id or local path, or a loaded
            ``(model, tokenizer)`` pair. Loaded models are shared between environments in a process;
            steps never change their weights.
        inner_loop: LoRA settings of each update (default :class:`InnerLoopConfig`).
        reward_margin: reward is 1.0 iff ``score > baseline_score + reward_margin``.
        max_self_edit_chars: longer self-edits are rejected (reward 0.0, ``info["error"]``).
        max_train_examples: a self-edit yielding more examples is cut to this many (reported).
        device: where to load a model given by name (default: CUDA if present, else CPU).
        render_mode: ``None`` or ``"ansi"`` (text summary of the last step).

    Observations are dicts ``{"prompt": str, "context": str}``: ``prompt`` is what a generator
    continues to write a self-edit; ``context`` is the raw context as text.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        contexts: Sequence[ContextT],
        *,
        model: str | tuple[PreTrainedModel, PreTrainedTokenizerBase] | None = None,
        inner_loop: InnerLoopConfig | None = None,
        reward_margin: float = 0.0,
        max_self_edit_chars: int = DEFAULT_MAX_SELF_EDIT_CHARS,
        max_train_examples: int = 64,
        device: str | torch.device | None = None,
        render_mode: str | None = None,
    ):
        if not contexts:
            raise ValueError(f"{type(self).__name__} needs at least one context")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.contexts = list(contexts)
        if isinstance(model, tuple):
            self.model, self.tokenizer = model
        else:
            self.model, self.tokenizer = load_model(model, device=device)
        self.inner_loop = inner_loop or InnerLoopConfig()
        self.reward_margin = reward_margin
        self.max_self_edit_chars = max_self_edit_chars
        self.max_train_examples = max_train_examples
        self.render_mode = render_mode
        self.action_space = UnicodeText(max_self_edit_chars)
        self.observation_space = spaces.Dict(
            {"prompt": UnicodeText(_OBSERVATION_MAX_CHARS), "context": UnicodeText(_OBSERVATION_MAX_CHARS)}
        )
        self._index: int | None = None
        self._baselines: dict[int, Evaluation | BaselineError] = {}
        self._last_info: dict[str, Any] | None = None

    # ------------------------------------------------------------------ hooks for subclasses

    def render_prompt(self, context: ContextT) -> str:
        """The instruction a generator continues to write a self-edit for ``context``."""
        raise NotImplementedError

    def render_context(self, context: ContextT) -> str:
        """The context as text, for ``obs["context"]``."""
        return str(context)

    def self_edit_to_examples(self, self_edit: str, context: ContextT) -> list[TrainingExample]:
        """Training examples made from a self-edit; raise :class:`SelfEditError` if unusable."""
        raise NotImplementedError

    def plan_training(self, self_edit: str, context: ContextT) -> TrainingPlan:
        """Examples and settings of the update; by default the env's ``inner_loop`` settings."""
        return TrainingPlan(self.self_edit_to_examples(self_edit, context), self.inner_loop)

    def evaluate(self, model: torch.nn.Module, context: ContextT) -> Evaluation:
        """Score ``model`` on ``context``. Called under ``torch.no_grad()``."""
        raise NotImplementedError

    def baseline_plan(self, context: ContextT) -> TrainingPlan | None:
        """The update the baseline is measured after; ``None`` (default) means no update."""
        return None

    # ------------------------------------------------------------------ Gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Start an episode on ``options["index"]``, else on a context drawn with ``np_random``."""
        super().reset(seed=seed)
        options = options or {}
        if "index" in options:
            index = context_index(options["index"], len(self.contexts))
        else:
            index = self.draw_context(self.np_random)
        self._index = index
        self._last_info = None
        return self.observation(index), {"context_index": index}

    def step(self, action: str) -> tuple[dict, float, bool, bool, dict[str, Any]]:
        """Adapt on the self-edit ``action``, evaluate, and reward improvement over the baseline.

        Never raises for a bad self-edit: it yields reward 0.0 with the reason in ``info["error"]``.
        """
        if self._index is None:
            raise RuntimeError("call reset() before step()")
        (result,) = self.run_steps([self.prepare_step(action, self._index)])
        self._last_info = result.info
        return self.observation(self._index), result.reward, True, False, result.info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        if self._index is None:
            return "no episode yet"
        if self._last_info is None:
            return f"context {self._index}: waiting for a self-edit"
        i = self._last_info
        if i["error"]:
            return f"context {i['context_index']}: self-edit rejected: {i['error']}"
        return (
            f"context {i['context_index']}: score {i['score']:.4f} vs baseline {i['baseline_score']:.4f} "
            f"(gain {i['gain']:+.4f}); {i['n_train_examples']} examples, loss {i['train_loss']:.3f}, "
            f"train {float(i['train_seconds']):.1f}s, eval {float(i['eval_seconds']):.1f}s"
        )

    # ------------------------------------------------------------------ the step, in two parts
    # step() is prepare_step -> run_steps. The batched vector env (seal_env.vector) calls the same two
    # methods with the self-edits of several slots, so both paths share one definition of info and reward.

    def observation(self, index: int) -> dict[str, str]:
        """The observation of context ``index``."""
        context = self.contexts[index]
        return {"prompt": self.render_prompt(context), "context": self.render_context(context)}

    def draw_context(self, rng: np.random.Generator) -> int:
        """A context index drawn with ``rng`` (what ``reset()`` does without ``options["index"]``)."""
        return int(rng.integers(len(self.contexts)))

    @property
    def batched_steps_available(self) -> bool:
        """Whether :meth:`run_steps` may train several steps together: a task that redefines ``step()``
        may do more than these parts, and is stepped as it is."""
        return type(self).step is SelfAdaptEnv.step

    def prepare_step(self, action: Any, index: int) -> PreparedStep:
        """Validate and plan the self-edit ``action`` on context ``index``, with that context's baseline.
        An unusable self-edit (or baseline) gives a step with no plan and the reason in ``error``."""
        try:
            baseline = self.baseline(index)
        except BaselineError as exc:
            return PreparedStep(index, None, None, str(exc))
        error = check_self_edit_text(action, self.max_self_edit_chars)
        plan = None
        if error is None:
            try:
                plan = self.plan_training(action, self.contexts[index])
            except SelfEditError as exc:
                error = str(exc)
        if error is None and not plan.examples:
            error, plan = "self-edit yields no training examples", None
        if plan is not None and len(plan.examples) > self.max_train_examples:
            dropped = len(plan.examples) - self.max_train_examples
            plan = replace(plan, examples=plan.examples[: self.max_train_examples],
                           notes={**plan.notes, "examples_dropped": dropped})
        return PreparedStep(index, baseline, plan, error)

    def run_steps(
        self, steps: Sequence[PreparedStep], *, batched: bool = False, max_batch_tokens: int | None = None,
        progress: bool = False,
    ) -> list[StepResult]:
        """Train and evaluate the prepared steps and reward them: one :class:`StepResult` per step.

        One after another through :func:`~seal_env.inner_loop.adapted`, or, with ``batched``, their
        updates trained in shared passes (:func:`~seal_env.multi_lora.adapted_many`, one group per
        LoRA structure) and the adapted models evaluated together (:meth:`evaluate_batch`).
        """
        outcomes: dict[int, tuple[TrainResult, Evaluation | None, float]] = {}
        ready = [k for k, step in enumerate(steps) if step.plan is not None]
        if not batched:
            for k in ready:
                plan = steps[k].plan
                with adapted(self.model, self.tokenizer, plan.examples, plan.config) as run:
                    outcomes[k] = self._evaluated(run.result, run.model, steps[k].context_index)
        else:
            groups: dict[tuple, list[int]] = {}
            for k in ready:
                groups.setdefault(lora_structure(steps[k].plan.config), []).append(k)
            for group in groups.values():
                with adapted_many(self.model, self.tokenizer, [steps[k].plan for k in group],
                                  max_batch_tokens=max_batch_tokens, progress=progress) as run:
                    trained = [(adapter, k) for adapter, k in enumerate(group) if run.results[adapter].error is None]
                    outcomes.update({k: (run.results[adapter], None, 0.0) for adapter, k in enumerate(group)})
                    if trained:
                        self._evaluate_together(run, trained, steps, outcomes)
        return [self._result(step, *outcomes.get(k, (None, None, 0.0))) for k, step in enumerate(steps)]

    def _evaluated(self, training: TrainResult, model: torch.nn.Module, index: int) -> tuple:
        if training.error:
            return training, None, 0.0
        start = time.perf_counter()
        with torch.no_grad():
            evaluation = self.evaluate(model, self.contexts[index])
        return training, evaluation, time.perf_counter() - start

    def _evaluate_together(self, run: Any, trained: list[tuple[int, int]], steps: Sequence[PreparedStep], outcomes: dict) -> None:
        adapter_of = [adapter for adapter, _ in trained]

        def route(owners: int | Sequence[int]) -> AbstractContextManager:
            return run.route(adapter_of[owners] if isinstance(owners, int) else [adapter_of[o] for o in owners])

        start = time.perf_counter()
        with torch.no_grad():
            evaluations = self.evaluate_batch(run.model, [self.contexts[steps[k].context_index] for _, k in trained], route)
        seconds = time.perf_counter() - start
        for (adapter, k), evaluation in zip(trained, evaluations):
            outcomes[k] = (run.results[adapter], evaluation, seconds)

    def _result(
        self, step: PreparedStep, training: TrainResult | None, evaluation: Evaluation | None, eval_seconds: float
    ) -> StepResult:
        """The one place a step's reward and ``info`` are made."""
        error = step.error or (training.error if training else None)
        broken = non_finite_values(evaluation) if evaluation is not None and error is None else []
        if broken:
            # A diverged update (e.g. on its last optimiser step, after the last finite loss) leaves
            # an adapter whose outputs are NaN: that is no evaluation of the self-edit.
            error = f"the adapted model's evaluation is not finite ({', '.join(broken[:3])}): the LoRA update diverged"
        if error is not None:
            evaluation = None
        baseline = step.baseline
        notes = dict(step.plan.notes) if step.plan is not None else {}
        if training is not None and training.n_truncated:
            notes["examples_truncated"] = training.n_truncated
        reward = 0.0
        if evaluation is not None:
            reward = 1.0 if evaluation.score > baseline.score + self.reward_margin else 0.0
        info: dict[str, Any] = {
            "context_index": step.context_index,
            "error": error,
            # None marks a value that was not measured (NaN would make equal infos compare unequal).
            "score": evaluation.score if evaluation else None,
            "baseline_score": baseline.score if baseline else None,
            "gain": evaluation.score - baseline.score if evaluation else None,
            "metrics": dict(evaluation.metrics) if evaluation else {},
            "baseline_metrics": dict(baseline.metrics) if baseline else {},
            "train_loss": training.final_loss if training and training.epoch_losses else None,
            "n_train_examples": training.n_examples if training else 0,
            "n_train_tokens": training.n_train_tokens if training else 0,
            "train_seconds": Seconds(training.seconds if training else 0.0),
            "eval_seconds": Seconds(eval_seconds),
            "items": evaluation.items if evaluation else [],
            "notes": notes,
        }
        return StepResult(step.context_index, reward, info)

    def evaluate_batch(
        self,
        model: torch.nn.Module,
        contexts: Sequence[ContextT],
        route: Callable[[int | Sequence[int]], AbstractContextManager],
    ) -> list[Evaluation]:
        """Score several adapted models at once: one :class:`Evaluation` per context, in order.

        ``model`` holds one adapter per context. Inside ``with route(owners):`` every forward pass of
        ``model`` sends batch row ``r`` through the adapter of ``contexts[owners[r]]``; an int sends
        all rows through that context's adapter. Called under ``torch.no_grad()``. The default
        evaluates one context after another; override it to batch the contexts' rows together.
        """
        evaluations = []
        for position, context in enumerate(contexts):
            with route(position):
                evaluations.append(self.evaluate(model, context))
        return evaluations

    # ------------------------------------------------------------------ pipeline

    def baseline(self, index: int) -> Evaluation:
        """The baseline evaluation of context ``index``, computed once and cached.

        Raises :class:`BaselineError` (also cached) when the baseline's update fails or its
        evaluation is not finite."""
        if index not in self._baselines:
            try:
                self._baselines[index] = self._measure_baseline(index)
            except BaselineError as exc:
                self._baselines[index] = exc
        cached = self._baselines[index]
        if isinstance(cached, BaselineError):
            raise cached
        return cached

    def _measure_baseline(self, index: int) -> Evaluation:
        context = self.contexts[index]
        plan = self.baseline_plan(context)
        if plan is None:
            with torch.no_grad():
                evaluation = self.evaluate(self.model, context)
        else:
            with adapted(self.model, self.tokenizer, plan.examples, plan.config) as run:
                if run.result.error:
                    raise BaselineError(f"the baseline update of context {index} failed: {run.result.error}")
                with torch.no_grad():
                    evaluation = self.evaluate(run.model, context)
        broken = non_finite_values(evaluation)
        if broken:
            names = ", ".join(broken[:3])
            raise BaselineError(f"the baseline evaluation of context {index} is not finite ({names})")
        return evaluation

    def clear_baseline_cache(self) -> None:
        """Forget cached baselines (after changing the inner model, say)."""
        self._baselines.clear()

    @property
    def num_contexts(self) -> int:
        """How many contexts episodes draw from (``options["index"]`` ranges over them)."""
        return len(self.contexts)

    def update_inner_model(self, write: Callable[[torch.nn.Module], None]) -> None:
        """Let ``write`` change the inner model's weights in place (a training job copies its current
        generator into a private inner model, the SEAL setting), then forget the baselines measured
        on the old weights."""
        with torch.no_grad():
            write(self.model)
        self.clear_baseline_cache()
