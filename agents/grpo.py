"""GRPO (Shao et al. 2024) through TRL's ``GRPOTrainer``, with the environment as the reward.

Each round builds a dataset of the round's training contexts (the observation's prompt, in the
model's chat template, and a ``context_index`` column) and runs one epoch of ``GRPOTrainer`` over it:
for every context the trainer samples ``num_generations`` self-edits (the group), and the reward
function :class:`EnvReward` steps the environment on each one *against its own context* (TRL hands
the dataset's ``context_index`` column to the reward function, one entry per completion). The
advantage of a self-edit is its reward relative to its group's. The policy is the generator's LoRA
adapter (PEFT), trained by the trainer in place.

The trainer owns sampling, so this agent overrides :meth:`~agents.base.Agent.train_round` rather
than writing ``learn``; every step still goes through :meth:`agents.base.Round.step` (logged, skipped
when a resumed run already logged it).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from accelerate import PartialState
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import GRPOConfig, GRPOTrainer

from agents.base import Round, StepRecord, StepRequest
from agents.generator import GeneratorAgent, GeneratorConfig, quiet_progress, trainer_args


@dataclass
class GRPOAgentConfig(GeneratorConfig):
    """GRPO settings (plus the generator settings of :class:`GeneratorConfig`)."""

    learning_rate: float = 5e-5
    """Learning rate of the generator's updates."""
    num_generations: int = 4
    """Self-edits per context in a group (GRPO's G): each reward is compared with its group's mean."""
    beta: float = 0.0
    """KL penalty towards the starting policy (0: none, and no reference model is kept)."""
    epsilon: float = 0.2
    """Clipping range of the policy ratio."""
    reward_signal: Literal["reward", "gain"] = "reward"
    """What GRPO maximises: the environment's binary 'reward', or the dense 'gain' (score - baseline;
    0 for unusable self-edits), which still ranks a group whose rewards are all equal."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 (GRPO compares self-edits within a group), got {self.num_generations}")
        if self.reward_signal not in ("reward", "gain"):
            raise ValueError(f"reward_signal must be 'reward' or 'gain', got {self.reward_signal!r}")


class EnvReward:
    """A TRL reward function that steps the environment on every completion against its own context.

    Called by ``GRPOTrainer`` with the batch's prompts, completions and the dataset's extra columns,
    one entry per completion; ``context_index[j]`` is the context that ``completions[j]`` was written
    for. Returns one reward per completion. The steps are numbered so that their keys are unique
    within the round (also across processes).
    """

    __name__ = "env_reward"  # TRL names the logged reward metrics after the function

    def __init__(self, round: Round, signal: str = "reward"):
        self.round = round
        self.signal = signal
        self.calls = 0
        self.records: list[StepRecord] = []

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], context_index: Sequence[int], **_: Any) -> list[float]:
        state = PartialState()
        first = (self.calls * state.num_processes + state.process_index) * len(completions)
        self.calls += 1
        requests = [
            StepRequest(int(index), first + j, _text(prompt), _text(completion))
            for j, (prompt, completion, index) in enumerate(zip(prompts, completions, context_index, strict=True))
        ]
        records = self.round.step(requests, shard=False)  # each process scores its own completions
        self.records.extend(records)
        if self.signal == "gain":
            return [r.info.get("gain") or 0.0 for r in records]
        return [r.reward for r in records]


def _text(message: Any) -> str:
    """The text of a prompt or completion in TRL's standard (str) or conversational (messages) form."""
    return message if isinstance(message, str) else message[-1]["content"]


class GRPOAgent(GeneratorAgent):
    """GRPO on a causal LM generator through TRL; see the module docstring."""

    name = "grpo"

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: GRPOAgentConfig | None = None, *, seed: int = 0
    ):
        config = config or GRPOAgentConfig()
        super().__init__(model, tokenizer, config, seed=seed)
        self.samples_per_context = config.num_generations

    def train_round(self, round: Round) -> dict[str, float]:
        """One epoch of GRPO over the round's contexts; metrics: optimiser steps and mean loss."""
        dataset = Dataset.from_list(
            [
                {"prompt": [{"role": "user", "content": obs["prompt"]}], "context_index": index}
                for index, obs in zip(round.context_indices, round.observations)
            ]
        )
        reward = EnvReward(round, self.config.reward_signal)
        with tempfile.TemporaryDirectory(prefix="grpo-") as scratch:  # nothing is saved there
            args = GRPOConfig(
                output_dir=scratch,
                num_generations=self.config.num_generations,
                per_device_train_batch_size=self.config.num_generations,  # one context's group per step and process
                num_train_epochs=1,
                max_completion_length=self.config.max_new_tokens,
                temperature=self.config.temperature,
                top_p=self.config.top_p,
                beta=self.config.beta,
                epsilon=self.config.epsilon,
                **trainer_args(self.model, self.config, seed=round.seed),
            )
            trainer = GRPOTrainer(
                model=self.model, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=self.tokenizer
            )
            quiet_progress(trainer)
            result = trainer.train()
        self.model.eval()
        logged = [entry for entry in trainer.state.log_history if "loss" in entry]
        for entry in logged:
            round.logger({f"grpo/{k}": v for k, v in entry.items() if k not in ("step", "epoch")}, entry["step"])
        return {"steps": float(result.global_step), "loss": float(result.training_loss)}
