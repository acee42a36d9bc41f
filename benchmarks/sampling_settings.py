"""Which sampling settings give the untrained generator self-edits that the reward can select from?

ReST-EM learns by keeping a context's best sampled self-edits and fine-tuning the generator on them,
so a recipe needs samples whose rewards differ within a context, and better ones that share a
learnable trait. For each *setting* (a self-edit format of the knowledge environment and a sampling
temperature), this script samples ``--samples`` self-edits per passage from the untrained model and
steps each in the environment with its defaults (damage-controlled log-likelihood reward; greedy
answers only when the reward is computed from them), batched through the multi-LoRA path. It
reports, per setting, with 95% bootstrap intervals over passages:

* ``gain`` - the mean dense gain (score minus baseline), and ``reward`` - the share rewarded;
* ``best_of_k_gain`` - the mean of each passage's best gain (what ``--keep best`` keeps);
* ``within_sd`` - the mean within-passage standard deviation of the gains (what selection can use);
* ``overlap`` - the mean share of a self-edit's words that occur in its passage (copying), and
  ``overlap_gain_r`` - the Spearman correlation of overlap and gain, pooled over self-edits;
* ``coverage`` - the mean share of the passage's distinct words that a self-edit carries, and
  ``coverage_gain_r`` - the correlation of coverage and gain among one passage's samples (within
  passage, what best-of-k selection acts on); ``coverage_metric_r`` the same for the gain in each
  metric the environment measured (all of them when it generates answers), whatever the reward;
* ``selection_by_metric`` - per metric, what best-of-k selection by that metric's gain would keep:
  ``extra_coverage``, the kept self-edit's coverage minus the mean of all the passage's samples (the
  selection differential that ``selection_signal.py`` reports for a run), and ``extra_contains``,
  the same for the gain in answer containment (ties for best count as a random pick among them);

plus, as a reference, the restatement's gain (the passage one sentence per line). ``--env-kwargs``
changes the reward the environment computes (e.g. trained together with the passage, against the
passage alone), as the train job's option of that name does.

Steps are appended to ``<out>/steps.jsonl`` (the same command resumes); the summary goes to
``<out>/sampling_settings.json`` with a markdown table beside it.

Example::

    python benchmarks/sampling_settings.py --data ../shared/data/squad_train_passages.json --limit 6 --samples 4 \\
        --settings implications@1.0,implications@0.5,rewrite@0.5,rewrite@1.0,self-qa@0.7 \\
        --out results/sampling_settings --threads 1
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from _common import (ResultLog, bootstrap_ci, finite_or_none, format_interval, main_exit_code, markdown_table, restatement,
                     run_environment, selection_differential, spearman, within_group_r, word_coverage, word_overlap,
                     write_results)
from seal_env.config_cli import json_object, parse_config
from seal_env.lm import sample_self_edits
from seal_env.models import DEFAULT_MODEL_NAME, load_model
from seal_env.tasks.knowledge import DENSE_METRICS, REWARD_METRICS, SELF_EDIT_PROMPTS, KnowledgeIncorporationEnv, load_passages

@dataclass
class SamplingSettingsConfig:
    """Settings of a run; the command line maps one to one onto these fields."""

    data: Path | None = None
    """Passages JSON (training passages: this chooses a training recipe)."""
    settings: tuple[str, ...] = field(
        default=("implications@1.0", "implications@0.7", "rewrite@0.7", "self-qa@0.7"),
        metadata={"parse": lambda text: tuple(s.strip() for s in text.split(",") if s.strip())})
    """``format@temperature`` pairs (comma-separated on the command line)."""
    limit: int = 6
    """Use the first N passages."""
    samples: int = 4
    """Self-edits sampled per passage and setting."""
    sample_tokens: int = 128
    """Longest sampled self-edit, in tokens (the train job's default)."""
    seed: int = 0
    """Seed of sampling (passage i uses seed + i) and of the bootstrap."""
    model: str | None = None
    """Model id or path (default: the embedded SmolLM2-135M-Instruct)."""
    device: str | None = None
    """Device of the model (default: CUDA when available, else CPU)."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice)."""
    out: Path = Path("runs/sampling_settings")
    """Folder of the resumable step log and the summary."""
    env_kwargs: str = "{}"
    """Extra keyword arguments of the environment as JSON, as ``seal-env train --env-kwargs`` takes them,
    e.g. '{"include_passage": true, "baseline": "passage"}' (what a self-edit adds beyond its passage)."""


# What each setting or the probe itself decides; --env-kwargs may not override them.
_FIXED_ENV_KWARGS = ("passages", "model", "self_edit_format", "answer_generation")


def parse_env_kwargs(text: str) -> dict[str, Any]:
    """``--env-kwargs`` as a dict, with a clear error for anything but a JSON object of free settings."""
    kwargs = json_object(text, "env_kwargs")
    fixed = sorted(set(kwargs) & set(_FIXED_ENV_KWARGS))
    if fixed:
        raise ValueError(f"env_kwargs cannot set {', '.join(fixed)}: the probe sets them (use --data, --model, --settings)")
    return kwargs


def parse_setting(setting: str) -> tuple[str, float]:
    """``"rewrite@0.7"`` as ``("rewrite", 0.7)``, with a clear error for anything else."""
    name, sep, temperature = setting.partition("@")
    if not sep or name not in SELF_EDIT_PROMPTS:
        raise ValueError(f"setting {setting!r}: expected FORMAT@TEMPERATURE with FORMAT one of {sorted(SELF_EDIT_PROMPTS)}")
    try:
        value = float(temperature)
    except ValueError:
        raise ValueError(f"setting {setting!r}: temperature {temperature!r} is not a number") from None
    if value <= 0:
        raise ValueError(f"setting {setting!r}: the temperature must be above 0")
    return name, value


class SamplingSettings:
    def __init__(self, config: SamplingSettingsConfig, model: tuple[torch.nn.Module, Any] | None = None):
        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        self.settings = {setting: parse_setting(setting) for setting in config.settings}
        self.passages = load_passages(config.data)[: config.limit]
        if len(self.passages) < 2:
            raise ValueError(f"{config.data}: needs at least 2 passages (the reward's control is another passage)")
        env_kwargs = parse_env_kwargs(config.env_kwargs)
        self.model = model or load_model(config.model, device=config.device)
        # Greedy answers, the larger part of a step's evaluation, only for a reward computed from them.
        answer_generation = env_kwargs.get("reward_metric") in set(REWARD_METRICS) - set(DENSE_METRICS)
        # One environment per format (its prompt); all share the model and the reward.
        try:
            self.envs = {name: KnowledgeIncorporationEnv(self.passages, model=self.model, self_edit_format=name,
                                                         answer_generation=answer_generation, **env_kwargs)
                         for name in dict.fromkeys(name for name, _ in self.settings.values())}
        except TypeError as error:  # an argument the environment does not take
            raise ValueError(f"env_kwargs: {error}") from None
        provenance = {"data": str(config.data), "model": config.model or DEFAULT_MODEL_NAME,
                      "samples": config.samples, "sample_tokens": config.sample_tokens, "seed": config.seed,
                      "inner_loop": next(iter(self.envs.values())).inner_loop.to_dict()}
        if env_kwargs:  # absent when empty, so that logs written before the option still resume
            provenance["env_kwargs"] = env_kwargs
        config.out.mkdir(parents=True, exist_ok=True)
        self.log = ResultLog(config.out / "steps.jsonl", provenance, ("setting", "passage", "sample"))

    def _step(self, env: KnowledgeIncorporationEnv, index: int, texts: Sequence[str]) -> list[dict[str, Any]]:
        results = env.run_steps([env.prepare_step(text, index) for text in texts], batched=True)
        return [{"gain": r.info["gain"], "reward": r.reward, "error": r.info["error"],
                 "metric_gains": {name: value - r.info["baseline_metrics"][name] for name, value in r.info["metrics"].items()
                                  if name in r.info["baseline_metrics"]},
                 "overlap": word_overlap(text, self.passages[index].context),
                 "coverage": word_coverage(text, self.passages[index].context), "self_edit": text}
                for r, text in zip(results, texts)]

    def run(self) -> dict[str, Any]:
        config = self.config
        work = [(setting, index) for setting in ["restatement", *config.settings] for index in range(len(self.passages))]
        for setting, index in tqdm(work, desc="settings x passages"):
            last_sample = 0 if setting == "restatement" else config.samples - 1
            if (setting, index, last_sample) in self.log:  # a unit's steps are logged in sample order
                continue
            if setting == "restatement":
                env, texts = next(iter(self.envs.values())), [restatement(self.passages[index].context)]
            else:
                name, temperature = self.settings[setting]
                env = self.envs[name]
                texts = sample_self_edits(self.model[0], self.model[1], [env.observation(index)["prompt"]],
                                          n=config.samples, temperature=temperature,
                                          max_new_tokens=config.sample_tokens, seed=config.seed + index)[0]
            for sample, record in enumerate(self._step(env, index, texts)):
                self.log.append({"setting": setting, "passage": index, "sample": sample, **record})
        summary = {"config": {**vars(config), "data": str(config.data), "out": str(config.out)},
                   "settings": {s: summarise(list(self.log), s, config.seed) for s in ["restatement", *config.settings]},
                   "environment": run_environment()}
        write_results(config.out / "sampling_settings.json", summary, markdown(summary["settings"]))
        return summary


def summarise(records: Sequence[dict[str, Any]], setting: str, seed: int = 0) -> dict[str, Any]:
    """The statistics of one setting's steps (a failed step counts as gain 0, reward 0: it teaches nothing)."""
    by_passage: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        if record["setting"] == setting:
            by_passage.setdefault(record["passage"], []).append(record)
    if not by_passage:
        return {"n_passages": 0}
    gains = {p: [r["gain"] if r["gain"] is not None else 0.0 for r in rs] for p, rs in by_passage.items()}

    def interval(per_passage: list[float]) -> dict[str, float]:
        return bootstrap_ci(per_passage, seed=seed).to_dict()

    pooled = [r for rs in by_passage.values() for r in rs]
    return {
        "n_passages": len(by_passage),
        "n_self_edits": len(pooled),
        "errors": sum(r["error"] is not None for r in pooled),
        "gain": interval([statistics.fmean(g) for g in gains.values()]),
        "reward": interval([statistics.fmean(r["reward"] for r in rs) for rs in by_passage.values()]),
        "best_of_k_gain": interval([max(g) for g in gains.values()]),
        "within_sd": interval([statistics.pstdev(g) for g in gains.values()]),
        "overlap": interval([statistics.fmean(r["overlap"] for r in rs) for rs in by_passage.values()]),
        "overlap_gain_r": spearman([r["overlap"] for r in pooled], [g for rs in gains.values() for g in rs]),
        **_coverage(by_passage, gains, interval),
    }


def _coverage(by_passage: dict[int, list[dict[str, Any]]], gains: dict[int, list[float]],
              interval: Callable[[list[float]], dict[str, float]]) -> dict[str, Any]:
    """Coverage and its within-passage correlation with the gain; none for a log written before
    steps recorded their coverage."""
    if any("coverage" not in r for rs in by_passage.values() for r in rs):
        return {}
    usable = {p: [r for r in rs if r.get("metric_gains")] for p, rs in by_passage.items()}
    metrics = sorted({name for rs in usable.values() for r in rs for name in r["metric_gains"]})
    return {"coverage": interval([statistics.fmean(r["coverage"] for r in rs) for rs in by_passage.values()]),
            "coverage_gain_r": finite_or_none(within_group_r([[(r["coverage"], g) for r, g in zip(rs, gains[p])]
                                                       for p, rs in by_passage.items()])),
            "coverage_metric_r": {name: finite_or_none(within_group_r([[(r["coverage"], r["metric_gains"][name]) for r in rs]
                                                                for rs in usable.values()])) for name in metrics},
            "selection_by_metric": {name: _selection_by(name, usable, interval) for name in metrics}}


def _selection_by(metric: str, usable: dict[int, list[dict[str, Any]]],
                  interval: Callable[[list[float]], dict[str, float]]) -> dict[str, Any]:
    """What keeping each passage's best sample by ``metric``'s gain selects: the kept sample's
    coverage (and containment gain, when measured) minus the mean of all the passage's samples
    (:func:`_common.selection_differential`, as ``selection_signal.py`` measures), over passages."""
    extra: dict[str, list[float]] = {"extra_coverage": [], "extra_contains": []}
    for records in usable.values():
        if len(records) < 2:
            continue
        gains = [r["metric_gains"][metric] for r in records]
        best = max(gains)
        kept = [i for i, gain in enumerate(gains) if gain == best]
        for name, trait in (("extra_coverage", lambda r: r["coverage"]), ("extra_contains", lambda r: r["metric_gains"].get("contains"))):
            values = [trait(r) for r in records]
            if all(value is not None for value in values):
                extra[name].append(selection_differential(values, kept))
    return {name: interval(values) if values else None for name, values in extra.items()}


def markdown(settings: dict[str, dict[str, Any]]) -> str:
    def cell(entry: Any) -> str:
        return "-" if entry is None else format_interval(entry, digits=2)

    def r(value: float | None) -> str:
        return f"{value:.2f}" if value is not None and math.isfinite(value) else "-"

    rows = [[name, s["n_passages"], s.get("n_self_edits", 0), s.get("errors", 0), cell(s.get("gain")),
             cell(s.get("reward")), cell(s.get("best_of_k_gain")), cell(s.get("within_sd")), cell(s.get("overlap")),
             r(s.get("overlap_gain_r")), cell(s.get("coverage")), r(s.get("coverage_gain_r"))]
            for name, s in settings.items()]
    table = markdown_table(["setting", "passages", "self-edits", "errors", "gain", "reward", "best-of-k gain",
                            "within-passage sd", "word overlap", "overlap-gain r", "coverage",
                            "coverage-gain r (within passage)"], rows)
    selection = [[name, metric, r(s["coverage_metric_r"].get(metric)), cell(by["extra_coverage"]), cell(by["extra_contains"])]
                 for name, s in settings.items() for metric, by in s.get("selection_by_metric", {}).items()
                 if by["extra_coverage"] is not None]  # none: one sample per passage, nothing to select
    if not selection:
        return table
    return table + "\n" + markdown_table(["setting", "selecting by the gain in", "coverage-gain r (within passage)",
                                          "kept: extra coverage", "kept: extra containment gain"], selection)


def main(argv: Sequence[str] | None = None) -> int:
    return main_exit_code("sampling_settings", lambda: SamplingSettings(
        parse_config(SamplingSettingsConfig, argv, __doc__.split("\n\n")[0], required=("data",))).run())


if __name__ == "__main__":
    sys.exit(main())
