"""What did ReST-EM's selection pick? The kept self-edits against their siblings, per training round.

A knowledge run's score decides which of a context's sampled self-edits are fine-tuned on. This
reads a finished (or running) `seal-env train` run's log and asks whether that choice favoured what the
evaluation benchmark measures - the gold answers' log-likelihood after the update - or something
else. For every training round, over the contexts with at least two usable samples:

* ``gain``: the mean of the run's score minus its baseline's (what the reward thresholds);
* ``own_gain``: the part of it in the gold answers' own log-likelihood (``log_likelihood`` after the
  update minus the baseline's), and ``control_part``: the part from *other* passages' answers
  (minus the change of ``control_log_likelihood``; only with the damage-controlled score, which
  subtracts it, so that damage to other answers raises the score);
* ``kept_own_advantage``: the kept self-edit's own gain minus its context's mean (the selection
  differential on the benchmark's measure), and ``best_own_advantage``: the same for the sample that
  selecting by the own gain would have kept, over the same contexts (those where a sample was kept);
* ``kept_lines_advantage``: how many more training lines the kept self-edit had than its context's mean,
  and ``score_lines_r``: the within-context correlation of the score with the number of lines;
* ``overlap``: the share of a sample's words found in its prompt (which holds the passage: how much
  it copies), and ``kept_overlap_advantage``: how much more the kept self-edit copied than its
  context's mean. A round-on-round rise of ``overlap`` that selection did not favour comes from the
  fine-tuning on the generator's own samples, not from the reward;
* ``coverage``: the share of the prompt's distinct words (the passage's, and the instruction's few)
  that a sample contains (how much of its passage it carries), and ``kept_coverage_advantage``: how
  much more the kept self-edit carried than its context's mean (``sampling_settings.py`` counts the
  passage's words alone);
* ``repetition``: the share of a sample's word trigrams that repeat an earlier one of it (how much
  of its length restates itself), and ``kept_repetition_advantage``: how much more the kept self-edit
  repeated itself than its context's mean.

Every "kept" column is a selection differential (:func:`_common.selection_differential`): the kept
sample minus the mean of all of its context's samples, the kept one included.

Each mean comes with a 95% bootstrap interval over contexts (a context's samples are averaged first).
The kept self-edits are recomputed with the run's own rule (:func:`agents.rest_em.select_self_edits`).
Prints a markdown table and writes it with the numbers as JSON::

    python benchmarks/selection_signal.py --run-dir results/learning_run/rest_em_rewrite_plus \\
        --out results/learning_run/rest_em_rewrite_plus_selection

Only reads the run's folder (a last line cut short by a run still writing is ignored).
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from _common import (RunSummaryConfig, finite_or_none, format_interval, markdown_table, run_summary_main, selection_differential,
                     trigram_repetition, word_coverage, word_overlap)

from agents.base import StepRecord
from agents.rest_em import select_self_edits
from agents.run_log import RunLog
from agents.stats import bootstrap_ci, within_group_r
from agents.train_config import CONFIG_FILE
from seal_env.config_cli import comma_list


def _own_gain(record: StepRecord) -> float:
    info = record.info
    try:
        return float(info["metrics"]["log_likelihood"]) - float(info["baseline_metrics"]["log_likelihood"])
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"step {record.key} has no gold log-likelihood for the update and its baseline "
            f"(metrics/baseline_metrics 'log_likelihood'): only knowledge-incorporation runs can be read"
        ) from error


def _control_part(record: StepRecord) -> float | None:
    metrics, baseline = record.info["metrics"], record.info["baseline_metrics"]
    if "control_log_likelihood" not in metrics or "control_log_likelihood" not in (baseline or {}):
        return None
    return -(float(metrics["control_log_likelihood"]) - float(baseline["control_log_likelihood"]))


def _interval(values: Sequence[float], n_resamples: int, seed: int) -> dict[str, float] | None:
    return bootstrap_ci(values, n_resamples=n_resamples, seed=seed).to_dict() if values else None


# Text traits of a sample, each reported as its context's mean and as the kept sample's advantage.
TEXT_TRAITS: dict[str, Callable[[StepRecord], float]] = {
    "overlap": lambda r: word_overlap(r.self_edit, r.prompt),
    "coverage": lambda r: word_coverage(r.self_edit, r.prompt),
    "repetition": lambda r: trigram_repetition(r.self_edit),
}


def round_summary(records: Sequence[StepRecord], keep: str, *, keep_by: Sequence[str] | None = None, n_resamples: int,
                  seed: int) -> dict[str, Any]:
    """The selection statistics of one round's training steps (see the module docstring)."""
    usable = [r for r in records if r.score is not None and not r.info.get("error")]
    by_context: dict[int, list[StepRecord]] = defaultdict(list)
    for record in usable:
        by_context[record.context_index].append(record)
    contexts = {c: rs for c, rs in sorted(by_context.items()) if len(rs) >= 2}
    kept = {r.context_index: r for r in select_self_edits(usable, keep, keep_by) if r.context_index in contexts}

    gain, own, control, kept_own, best_own, kept_lines, lines_pairs = [], [], [], [], [], [], []
    trait_means: dict[str, list[float]] = {trait: [] for trait in TEXT_TRAITS}
    kept_trait: dict[str, list[float]] = {trait: [] for trait in TEXT_TRAITS}
    for context, siblings in contexts.items():
        owns = [_own_gain(r) for r in siblings]
        traits = {trait: [measure(r) for r in siblings] for trait, measure in TEXT_TRAITS.items()}
        for trait, values in traits.items():
            trait_means[trait].append(float(np.mean(values)))
        lines = [float(r.info.get("n_train_examples", math.nan)) for r in siblings]
        gain.append(float(np.mean([r.info["gain"] for r in siblings])))
        own.append(float(np.mean(owns)))
        parts = [_control_part(r) for r in siblings]
        if all(p is not None for p in parts):
            control.append(float(np.mean(parts)))
        if context in kept:
            k = [siblings.index(kept[context])]
            best_own.append(selection_differential(owns, [int(np.argmax(owns))]))
            kept_own.append(selection_differential(owns, k))
            kept_lines.append(selection_differential(lines, k))
            for trait, values in traits.items():
                kept_trait[trait].append(selection_differential(values, k))
        lines_pairs.append([(r.score, n) for r, n in zip(siblings, lines)])
    ci = lambda values: _interval(values, n_resamples, seed)  # noqa: E731
    return {
        "round": records[0].round if records else None,
        "n_contexts": len(contexts),
        "n_kept": len(kept),
        "gain": ci(gain),
        "own_gain": ci(own),
        "control_part": ci(control),
        "kept_own_advantage": ci(kept_own),
        "best_own_advantage": ci(best_own),
        "kept_lines_advantage": ci(kept_lines),
        "score_lines_r": finite_or_none(within_group_r(lines_pairs)),
        **{key: value for trait in TEXT_TRAITS
           for key, value in ((trait, ci(trait_means[trait])), (f"kept_{trait}_advantage", ci(kept_trait[trait])))},
    }


@dataclass
class SelectionSignalConfig(RunSummaryConfig):
    """The summary's settings: :class:`_common.RunSummaryConfig` and a selection rule to try."""

    keep_by: list[str] | None = field(default=None, metadata={"parse": comma_list()})
    """Recompute the kept self-edits as ``--keep best --keep-by`` these metrics would have kept them
    from the same logged samples (default: the run's own rule). A round after the first sampled from
    a generator the run's own rule trained, so only the first round compares rules on equal terms."""


def summarise(run_dir: Path, *, n_resamples: int = 10_000, seed: int = 0, keep_by: Sequence[str] | None = None) -> dict[str, Any]:
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"{run_dir}: no {CONFIG_FILE} (is it a seal-env train output folder?)")
    agent_config = json.loads(config_path.read_text(encoding="utf-8")).get("agent_config", {})
    if "keep" not in agent_config:
        raise ValueError(f"{run_dir}: the run's agent keeps no self-edits by reward (not a ReST-EM run)")
    keep, run_keep_by = agent_config["keep"], agent_config.get("keep_by")
    if keep_by is not None and keep != "best":
        raise ValueError(f"{run_dir}: --keep-by recomputes a best-of-n selection, but the run kept {keep!r} self-edits")
    log = RunLog(run_dir)
    log.read(repair=False)  # never write to the run's log
    rounds = sorted({key[0] for key in log.steps if key[1] == "train"})
    if not rounds:
        raise ValueError(f"{run_dir}: no training steps in the log")
    return {
        "run": str(run_dir),
        "keep": keep,
        "keep_by": run_keep_by,
        # The rule the "kept" columns follow when it is not the run's own.
        "recomputed_keep_by": None if keep_by is None else list(keep_by),
        "rounds": [round_summary(log.records(r, "train"), keep, keep_by=run_keep_by if keep_by is None else keep_by,
                                 n_resamples=n_resamples, seed=seed) for r in rounds],
    }


def markdown(summary: dict[str, Any]) -> str:
    header = ["round", "contexts (kept)", "gain", "own gain", "control part", "kept: own advantage",
              "best own advantage", "kept: extra lines", "score-lines r", "overlap", "kept: extra overlap", "coverage",
              "kept: extra coverage", "repetition", "kept: extra repetition"]
    fmt = lambda value: "—" if value is None else format_interval(value, digits=2)  # noqa: E731
    rows = [
        [entry["round"], f"{entry['n_contexts']} ({entry['n_kept']})", fmt(entry["gain"]), fmt(entry["own_gain"]), fmt(entry["control_part"]),
         fmt(entry["kept_own_advantage"]), fmt(entry["best_own_advantage"]), fmt(entry["kept_lines_advantage"]),
         "—" if entry["score_lines_r"] is None else f"{entry['score_lines_r']:.2f}",
         fmt(entry["overlap"]), fmt(entry["kept_overlap_advantage"]), fmt(entry["coverage"]),
         fmt(entry["kept_coverage_advantage"]), fmt(entry["repetition"]), fmt(entry["kept_repetition_advantage"])]
        for entry in summary["rounds"]
    ]
    table = markdown_table(header, rows)
    if summary.get("recomputed_keep_by"):
        rule = ",".join(summary["recomputed_keep_by"])
        return f"Kept as `--keep best --keep-by {rule}` would have kept from the same samples (not the run's own rule).\n\n{table}"
    return table


def main(argv: Sequence[str] | None = None) -> int:
    return run_summary_main("selection_signal", __doc__.split("\n\n")[0], summarise, markdown, argv, SelectionSignalConfig)


if __name__ == "__main__":
    sys.exit(main())
