"""ReST-EM (Singh et al. 2023), as SEAL trains its self-edit generator.

Each round: sample ``samples_per_context`` self-edits per training context from the current
generator (E-step), step the environment on each, keep the rewarded ones, and fine-tune the
generator on the kept (prompt, self-edit) pairs with TRL's ``SFTTrainer`` (M-step). The prompt is in
the model's chat template and the loss is on the self-edit only (TRL's prompt-completion format).
The next round samples from the updated generator; the adapter keeps training from round to round,
as in SEAL (the original ReST-EM restarts from the base model every round).

``keep="best"`` keeps only the highest-scoring rewarded self-edit of each context (SEAL's best-of-5
for knowledge incorporation); ``keep="rewarded"`` keeps every rewarded one. ``keep_by`` makes "best"
the highest sum of ranks in several of the step's metrics instead of the score (a Borda count).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Literal, Sequence

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import SFTConfig, SFTTrainer

from agents.base import StepRecord
from agents.generator import GeneratorAgent, GeneratorConfig, quiet_progress, trainer_args
from seal_env.config_cli import comma_list


@dataclass
class RestEMConfig(GeneratorConfig):
    """ReST-EM settings (plus the generator settings of :class:`GeneratorConfig`)."""

    samples_per_context: int = 3
    """Self-edits sampled per training context and round (SEAL: 5)."""
    keep: Literal["best", "rewarded"] = "best"
    """Which rewarded self-edits to fine-tune on: the best-scoring one per context, or all."""
    keep_by: list[str] | None = field(default=None, metadata={"parse": comma_list()})
    """With ``keep="best"``: names of the step's ``info["metrics"]`` to rank a context's rewarded
    self-edits by; the one with the highest sum of its ranks is kept (ties: the higher score). Ranks,
    not a sum of the metrics, so that the metric with the larger spread between siblings does not
    decide alone. None: the best score."""
    sft_epochs: int = 2
    """Passes of the supervised fine-tuning over the kept self-edits each round."""
    sft_batch_size: int = 4
    """Sequences per SFT optimiser step."""
    sft_max_length: int = 1024
    """Longest (prompt + self-edit) sequence in tokens for SFT; longer ones are truncated."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples_per_context < 1:
            raise ValueError(f"samples_per_context must be >= 1, got {self.samples_per_context}")
        if self.keep not in ("best", "rewarded"):
            raise ValueError(f"keep must be 'best' or 'rewarded', got {self.keep!r}")
        if self.keep_by is not None and (not self.keep_by or self.keep != "best"):
            raise ValueError(f"keep_by needs keep='best' and at least one metric name, got keep={self.keep!r}, "
                             f"keep_by={self.keep_by!r}")
        if self.sft_epochs < 1 or self.sft_batch_size < 1:
            raise ValueError("sft_epochs and sft_batch_size must be >= 1")


def select_self_edits(records: Sequence[StepRecord], keep: str, keep_by: Sequence[str] | None = None) -> list[StepRecord]:
    """The records to fine-tune on: those with a positive reward, or with ``keep="best"`` the
    highest-scoring rewarded one of each context (with ``keep_by``: the highest rank sum in those
    metrics, see :class:`RestEMConfig`; ties: the higher score, then the earliest sample). Context
    order kept."""
    rewarded = [r for r in records if r.reward > 0]
    if keep == "rewarded":
        return rewarded
    if keep != "best":
        raise ValueError(f"keep must be 'best' or 'rewarded', got {keep!r}")
    by_context: dict[int, list[StepRecord]] = {}
    for record in rewarded:
        by_context.setdefault(record.context_index, []).append(record)
    return [_best(siblings, keep_by) for siblings in by_context.values()]


def _best(siblings: Sequence[StepRecord], keep_by: Sequence[str] | None) -> StepRecord:
    """A context's best rewarded self-edit (``max`` returns the earliest of equals)."""
    if not keep_by:
        return max(siblings, key=_score)
    rank_sums = [0] * len(siblings)
    for name in keep_by:
        values = [_metric(record, name) for record in siblings]
        for position, value in enumerate(values):
            rank_sums[position] += sum(other < value for other in values)  # equal values share a rank
    return siblings[max(range(len(siblings)), key=lambda position: (rank_sums[position], _score(siblings[position])))]


def _metric(record: StepRecord, name: str) -> float:
    metrics = record.info.get("metrics") or {}
    if name not in metrics:
        raise ValueError(f"keep_by names {name!r}, but the step of context {record.context_index} has only the "
                         f"metrics {sorted(metrics)}")
    return float(metrics[name])


def _score(record: StepRecord) -> float:
    return float("-inf") if record.score is None else record.score


class RestEMAgent(GeneratorAgent):
    """ReST-EM on a causal LM generator; see the module docstring."""

    name = "rest-em"

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: RestEMConfig | None = None, *, seed: int = 0
    ):
        config = config or RestEMConfig()
        super().__init__(model, tokenizer, config, seed=seed)
        self.samples_per_context = config.samples_per_context

    def learn(self, records: Sequence[StepRecord], *, seed: int) -> dict[str, float]:
        """Fine-tune on the selected self-edits; metrics: how many were kept and the SFT loss."""
        kept = select_self_edits(records, self.config.keep, self.config.keep_by)
        metrics = {"kept": float(len(kept)), "rewarded": float(sum(r.reward > 0 for r in records))}
        if not kept:
            return metrics  # nothing rewarded: the generator stays as it is
        dataset = Dataset.from_list(
            [
                {
                    "prompt": [{"role": "user", "content": r.prompt}],
                    "completion": [{"role": "assistant", "content": r.self_edit}],
                }
                for r in kept
            ]
        )
        with tempfile.TemporaryDirectory(prefix="rest-em-sft-") as scratch:  # nothing is saved there
            args = SFTConfig(
                output_dir=scratch,
                num_train_epochs=self.config.sft_epochs,
                per_device_train_batch_size=self.config.sft_batch_size,
                max_length=self.config.sft_max_length,
                **trainer_args(self.model, self.config, seed=seed),
            )
            trainer = SFTTrainer(model=self.model, args=args, train_dataset=dataset, processing_class=self.tokenizer)
            quiet_progress(trainer)
            result = trainer.train()
        self.model.eval()
        metrics["sft_loss"] = float(result.training_loss)
        metrics["steps"] = float(result.global_step)
        return metrics
