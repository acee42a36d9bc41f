"""Did a training run's generator learn? Its held-out evaluations, round by round, with intervals.

Every round ends with the same held-out contexts (never trained on) stepped on fresh self-edits of
the current generator. :func:`held_out_rounds` reads them from the run's log: for each round the mean
reward and score with 95% bootstrap intervals over contexts (a context's samples are averaged first:
they share a context, so they are not independent), and the paired change from round 0 (the untrained
generator) on the same contexts. :func:`learning_verdict` says in words whether the last round's
change is evidence of learning. The training job prints it last and draws the intervals in its plot;
``benchmarks/held_out_rounds.py`` prints the table of a run folder.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from agents.base import EVAL, StepRecord
from agents.reporting import step_score
from agents.run_log import RunLog
from agents.stats import bootstrap_ci

VALUES: dict[str, Callable[[StepRecord], float]] = {
    "reward": lambda r: float(r.reward),
    "score": lambda r: float(step_score(r)),
}
"""What is averaged: the binary reward, and the score the step left the inner model with."""


def per_context_means(records: Sequence[StepRecord], value: Callable[[StepRecord], float]) -> dict[int, float]:
    """``value(record)`` averaged over each context's samples."""
    by_context: dict[int, list[float]] = {}
    for record in records:
        by_context.setdefault(record.context_index, []).append(value(record))
    return {context: float(np.mean(values)) for context, values in sorted(by_context.items())}


def held_out_rounds(log: RunLog, *, n_resamples: int = 10_000, seed: int = 0) -> list[dict[str, Any]]:
    """One entry per finished round of ``log``: ``reward`` and ``score`` (``{mean, low, high}``), from
    round 1 on their paired change ``reward_vs_round_0`` and ``score_vs_round_0``, the share of
    unusable self-edits and the self-edits' mean length in lines and characters."""
    first: dict[str, dict[int, float]] = {}
    rounds = []
    for metrics in log.rounds:
        records = log.records(metrics["round"], EVAL)
        entry: dict[str, Any] = {"round": metrics["round"], "n_steps": len(records)}
        for name, value in VALUES.items():
            means = per_context_means(records, value)
            first.setdefault(name, means)
            entry[name] = bootstrap_ci(list(means.values()), n_resamples=n_resamples, seed=seed).to_dict()
            if metrics["round"] > 0:
                if set(means) != set(first[name]):
                    raise ValueError(f"{log.directory}: round {metrics['round']} has other held-out contexts than round 0")
                differences = [means[c] - first[name][c] for c in means]
                entry[f"{name}_vs_round_0"] = bootstrap_ci(differences, n_resamples=n_resamples, seed=seed).to_dict()
        entry["n_contexts"] = len(first["reward"])
        entry["errors"] = float(np.mean([r.info.get("error") is not None for r in records]))
        entry["lines"] = float(np.mean([len([x for x in r.self_edit.splitlines() if x.strip()]) for r in records]))
        entry["chars"] = float(np.mean([len(r.self_edit) for r in records]))
        rounds.append(entry)
    return rounds


def learning_verdict(rounds: Sequence[dict[str, Any]]) -> str:
    """The last round's held-out change from round 0, with its interval, and whether it is evidence
    of learning: only an interval of the score's change that lies wholly above 0 counts."""
    if len(rounds) < 2:
        return "Held-out change from round 0: none yet (no training round has finished)."
    last = rounds[-1]
    n = last["n_contexts"]
    lines = [f"Held-out change from round 0 to round {last['round']} "
             f"(paired, 95% bootstrap interval over {n} held-out context{'s' if n != 1 else ''}):"]
    for name in VALUES:
        change = last[f"{name}_vs_round_0"]
        lines.append(f"  {name}: {change['mean']:+.3f} [{change['low']:+.3f}, {change['high']:+.3f}]")
    score = last["score_vs_round_0"]
    if score["low"] > 0:
        lines.append(f"The score's interval lies above 0: evidence that the generator learnt, at this size ({n} contexts).")
    elif score["high"] < 0:
        lines.append(f"The score's interval lies below 0: the generator got worse on held-out contexts ({n} contexts).")
    else:
        lines.append(f"The score's interval includes 0: this is not evidence of learning at this size ({n} contexts); "
                     "more held-out contexts, samples or rounds would be needed to tell.")
    return "\n".join(lines)
