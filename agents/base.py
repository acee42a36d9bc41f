"""The agent protocol: how a learner proposes self-edits and learns from their rewards.

An agent sees environments only through the Gymnasium API: an observation is a dict whose
``"prompt"`` asks for a self-edit, the action is the self-edit text, and ``step()`` returns a reward
(1.0 when the update on the self-edit beat the baseline) with the evidence in ``info``. So every agent
works on every registered environment.

Training goes in rounds (see :func:`agents.runner.train`). In each round the runner hands the agent a
:class:`Round`: this round's training contexts, a seed, and :meth:`Round.step`, which steps the
environment on self-edits, appends every result to the run's log as it completes, and skips steps
that an interrupted run already logged. A new algorithm subclasses :class:`Agent` and writes four
methods::

    class MyAgent(Agent):
        samples_per_context = 4

        def propose(self, observations, n, *, seed):   # -> n self-edits per observation
            ...
        def learn(self, records, *, seed):             # records: list[StepRecord] -> metrics
            ...
        def save(self, directory): ...                 # write the policy to a folder
        def load(self, directory): ...                 # read it back (used by --resume)

The default :meth:`Agent.train_round` proposes ``samples_per_context`` self-edits per training
context, steps the environment on each and calls :meth:`Agent.learn` with the records: enough for
ReST-EM, REINFORCE and best-of-n methods (``examples/custom_agent.py`` is one in about 60 lines).
Algorithms whose trainer generates its own samples (GRPO through TRL) override
:meth:`Agent.train_round` and call :meth:`Round.step` from their reward function.
:class:`agents.generator.GeneratorAgent` implements ``propose``/``save``/``load`` for a Hugging Face
language model with a LoRA adapter, so that most agents only write ``learn``.

Beyond ``reset``/``step``, the training job needs two things of an environment, reached through
Gymnasium's ``env.get_wrapper_attr`` (so that wrappers pass them through): ``num_contexts``, to
split held-out contexts from training ones, and ``update_inner_model(write)``, to copy the generator
into the inner model when a run trains the model it adapts (``--inner-model generator``). Whether
self-edits can be stepped in batches is the vector environment's ``batched`` (see
:func:`agents.stepping.make_env`). :class:`seal_env.env.SelfAdaptEnv` provides all three.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

TRAIN = "train"
EVAL = "eval"


@dataclass(frozen=True)
class StepRecord:
    """One environment step: the observation's prompt, the self-edit, and what came back.

    ``(round, phase, context_index, sample)`` identifies the step within a run: ``phase`` is
    ``"train"`` (self-edits the agent learns from) or ``"eval"`` (held-out evaluation), and
    ``sample`` numbers the self-edits of one context in one round. ``info`` is the environment's
    ``info`` made JSON-safe (numbers, strings, lists and dicts), exactly as stored in the run's log.
    """

    round: int
    phase: str
    context_index: int
    sample: int
    prompt: str
    self_edit: str
    reward: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, str, int, int]:
        return (self.round, self.phase, self.context_index, self.sample)

    @property
    def score(self) -> float | None:
        """The adapted model's score (None when the self-edit could not be used)."""
        return self.info.get("score")


@dataclass(frozen=True)
class StepRequest:
    """A self-edit to step the environment on: the fields of a :class:`StepRecord` before the step."""

    context_index: int
    sample: int
    prompt: str
    self_edit: str


class RunSteps(Protocol):
    """What a :class:`Round` asks of the run it belongs to (the runner's ``TrainingRun``)."""

    def step(self, round_index: int, phase: str, requests: Sequence[StepRequest], shard: bool) -> list[StepRecord]: ...

    def propose(self, round_index: int, phase: str, compute: Callable[[], list[list[str]]]) -> list[list[str]]: ...


class Round:
    """What the runner gives an agent for one round of training.

    Attributes:
        index: the round number (1, 2, ...; round 0 is the evaluation of the untrained generator).
        context_indices: this round's training contexts (indices for ``env.reset(options={"index": i})``).
        seed: the round's seed; use it (not a global random state) so that a resumed run repeats an
            uninterrupted one exactly.
        observations: one observation per entry of ``context_indices``.
        run: the run that steps, logs and resumes (see :class:`RunSteps`).
        logger: called with scalar metrics and a step number by agents that log during the round
            (e.g. a trainer's loss); the runner writes them to TensorBoard.
    """

    def __init__(
        self,
        index: int,
        context_indices: Sequence[int],
        observations: Sequence[dict[str, Any]],
        seed: int,
        run: RunSteps,
        logger: Callable[[dict[str, float], int], None] = lambda metrics, step: None,
    ):
        self.index = index
        self.context_indices = list(context_indices)
        self.observations = list(observations)
        self.seed = seed
        self.run = run
        self.logger = logger

    def step(self, requests: Sequence[StepRequest], *, shard: bool = True) -> list[StepRecord]:
        """Step the environment on each request; one :class:`StepRecord` per request, in order.

        Each result is appended to the run's log as it completes; a request that the log already
        holds (same round, context and sample, same self-edit) is not stepped again. With several
        processes (``accelerate launch``) and ``shard=True``, the processes share the requests and all
        get all records back; pass ``shard=False`` when every process steps its own requests (as in
        a distributed trainer's reward function).
        """
        return self.run.step(self.index, TRAIN, requests, shard)

    def propose(self, compute: Callable[[], list[list[str]]]) -> list[list[str]]:
        """The round's self-edits: ``compute()`` (e.g. ``agent.propose(...)``), logged before any step
        so that a resumed round steps exactly the same self-edits; read back from the log when the
        round was interrupted after proposing."""
        return self.run.propose(self.index, TRAIN, compute)


class Agent(abc.ABC):
    """A learner of self-edits. Subclasses implement :meth:`propose`, :meth:`save`, :meth:`load` and
    :meth:`learn` (or :meth:`train_round`); see the module docstring."""

    name: str = "agent"
    samples_per_context: int = 1
    """Self-edits proposed per training context in each round (by the default :meth:`train_round`)."""

    @abc.abstractmethod
    def propose(self, observations: Sequence[dict[str, Any]], n: int, *, seed: int) -> list[list[str]]:
        """``n`` self-edits for each observation (``obs["prompt"]`` asks for one). Same seed and same
        policy -> same self-edits."""

    def learn(self, records: Sequence[StepRecord], *, seed: int) -> dict[str, float]:
        """Update the policy from one round's records; return metrics to log (e.g. ``{"loss": ...}``;
        a ``"steps"`` entry, the optimiser steps taken, places in-round logs on TensorBoard's axis).
        Needed by the default :meth:`train_round`; agents that override it may leave it out."""
        raise NotImplementedError(f"{type(self).__name__} implements neither learn() nor train_round()")

    @abc.abstractmethod
    def save(self, directory: Path) -> None:
        """Write the policy to ``directory`` (created by the caller)."""

    @abc.abstractmethod
    def load(self, directory: Path) -> None:
        """Restore the policy written by :meth:`save` (bit-exact, so that resumed runs repeat)."""

    def train_round(self, round: Round) -> dict[str, float]:
        """One round of training: propose, step the environment on every self-edit, learn.

        Returns the metrics of :meth:`learn`. Override when a trainer samples by itself.
        """
        self_edits = round.propose(lambda: self.propose(round.observations, self.samples_per_context, seed=round.seed))
        requests = [
            StepRequest(index, sample, obs["prompt"], text)
            for index, obs, texts in zip(round.context_indices, round.observations, self_edits)
            for sample, text in enumerate(texts)
        ]
        return self.learn(round.step(requests), seed=round.seed)

    def sync_inner_model(self, model: Any) -> None:
        """Copy the policy's weights into ``model`` (the environment's inner model) when the run's
        inner model is the generator itself. Agents without a language model cannot do this."""
        raise NotImplementedError(f"{type(self).__name__} has no language model to use as the inner model")
