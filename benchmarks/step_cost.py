"""What a training round's step costs, before and after the three savings of the training job, split
into sampling, training and evaluation, measured in one run.

* **before**: self-edits sampled one sequence at a time; each stepped on its own (one LoRA update
  after another); the evaluation also generates greedy answers (``answer_generation=True``).
* **after**: self-edits sampled in batches (``--generation-batch-size``); stepped ``--num-envs`` at a
  time through the batched vector environment (multi-LoRA); no greedy answers when the reward needs
  none (``answer_generation=False``, as ``make learning-run`` sets).

Both step the very same self-edits (those sampled in batches; sampled one at a time, the texts can
differ in the last digits of the logits, so only the sampling is timed twice), with the
environment's default inner loop and reward, on the same model, after the baselines of every context
were computed outside the timings. Per self-edit: sampling is its share of the sampling wall time;
evaluation is the evaluation seconds the environment reports (shared by the slots of a batched step);
training is the rest of the stepping wall time. The script also reports whether both gave the same
rewards, and the largest score difference (multi-LoRA sums in another order).

Usage: python benchmarks/step_cost.py [--contexts 4] [--samples 4] [--threads 1] [--json results/step_cost/step_cost.json]
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

import seal_env  # noqa: F401  (registers the environments)
from _common import markdown_table, run_environment, write_results
from agents.base import StepRequest
from agents.stepping import SequentialStepper, Stepper, VectorStepper
from seal_env.config_cli import parse_config
from seal_env.lm import sample_self_edits
from seal_env.models import load_model
from seal_env.tasks.knowledge import KnowledgeIncorporationEnv
from seal_env.vector import SelfAdaptVectorEnv

PHASES = ("sampling", "training", "evaluation")


@dataclass
class StepCostConfig:
    """Settings of a run; the command line maps one to one onto these fields."""

    contexts: int = 4
    """Built-in passages used."""
    samples: int = 4
    """Self-edits sampled per context."""
    max_new_tokens: int = 128
    """Longest self-edit in tokens (the training job's default)."""
    generation_batch_size: int = 16
    """Sequences sampled together after the change (before: 1)."""
    num_envs: int = 4
    """Self-edits stepped together after the change (before: 1)."""
    threads: int = 1
    """torch threads."""
    seed: int = 0
    """Seed of sampling."""
    model: str | None = None
    """Inner model and generator (default: the embedded SmolLM2-135M-Instruct)."""
    json: str = "results/step_cost/step_cost.json"
    """Where to write the results (a markdown table beside it)."""


def timed_sampling(model: Any, tokenizer: Any, prompts: list[str], config: StepCostConfig, batch_size: int) -> tuple[float, list[list[str]]]:
    start = time.perf_counter()
    texts = sample_self_edits(model, tokenizer, prompts, n=config.samples, max_new_tokens=config.max_new_tokens,
                              batch_size=batch_size, seed=config.seed)
    return time.perf_counter() - start, texts


def timed_steps(stepper: Stepper, requests: Sequence[StepRequest]) -> tuple[float, float, list[tuple[float, float | None]]]:
    """Stepping wall seconds, the evaluation seconds among them, and each request's (reward, score)."""
    start, evaluation, outcomes = time.perf_counter(), 0.0, []
    for i in range(0, len(requests), stepper.batch_size):
        infos = []
        for reward, info in stepper(requests[i : i + stepper.batch_size]):
            outcomes.append((reward, info.get("score")))
            infos.append(info)
        seconds = [float(info["eval_seconds"]) for info in infos]
        # A batched step evaluates its slots together and reports that one time to each slot.
        evaluation += max(seconds) if stepper.batch_size > 1 else sum(seconds)
    return time.perf_counter() - start, evaluation, outcomes


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(StepCostConfig, argv, __doc__.split("\n\n")[0])
    torch.set_num_threads(config.threads)
    model, tokenizer = lm = load_model(config.model, device="cpu")
    before_env = KnowledgeIncorporationEnv(model=lm, answer_generation=True)
    after_vector = SelfAdaptVectorEnv(KnowledgeIncorporationEnv, config.num_envs, model=lm, answer_generation=False)
    indices = list(range(min(config.contexts, before_env.num_contexts)))
    prompts = [before_env.observation(i)["prompt"] for i in indices]
    for i in indices:  # the baselines, outside the timings
        before_env.baseline(i)
        after_vector.env.baseline(i)

    sampling = {"before": timed_sampling(model, tokenizer, prompts, config, 1)[0]}
    sampling["after"], texts = timed_sampling(model, tokenizer, prompts, config, config.generation_batch_size)
    requests = [StepRequest(i, k, prompt, text) for i, prompt, row in zip(indices, prompts, texts)
                for k, text in enumerate(row)]
    steppers = {"before": SequentialStepper(before_env), "after": VectorStepper(after_vector)}
    stepping, outcomes = {}, {}
    for name, stepper in steppers.items():
        wall, evaluation, outcomes[name] = timed_steps(stepper, requests)
        stepping[name] = {"training": wall - evaluation, "evaluation": evaluation}
        print(f"{name}: sampling {sampling[name]:.1f} s, stepping {wall:.1f} s", file=sys.stderr, flush=True)
    after_vector.close()

    n = len(requests)
    per_edit = {name: {"sampling": sampling[name] / n, **{k: v / n for k, v in stepping[name].items()}}
                for name in steppers}
    for row in per_edit.values():
        row["total"] = sum(row[phase] for phase in PHASES)
    ratios = {phase: per_edit["before"][phase] / per_edit["after"][phase] if per_edit["after"][phase] > 0 else None
              for phase in (*PHASES, "total")}
    same_rewards = [r for r, _ in outcomes["before"]] == [r for r, _ in outcomes["after"]]
    score_diffs = [abs(a - b) for (_, a), (_, b) in zip(outcomes["before"], outcomes["after"]) if a is not None and b is not None]
    result = {"config": vars(config), "self_edits": n, "seconds_per_self_edit": per_edit, "before_over_after": ratios,
              "same_rewards": same_rewards, "max_score_difference": max(score_diffs, default=None),
              "median_self_edit_lines": statistics.median(len([x for x in r.self_edit.splitlines() if x.strip()])
                                                          for r in requests),
              "environment": run_environment()}
    table = [[phase, f"{per_edit['before'][phase]:.2f}", f"{per_edit['after'][phase]:.2f}",
              "-" if ratios[phase] is None else f"{ratios[phase]:.2f}x"] for phase in (*PHASES, "total")]
    markdown = markdown_table(["phase", "before s / self-edit", "after s / self-edit", "before / after"], table)
    markdown += (f"\n{n} self-edits ({len(indices)} contexts x {config.samples}), {config.threads} torch thread(s); "
                 f"same rewards: {same_rewards}; largest score difference {result['max_score_difference']}\n")
    write_results(config.json, result, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
