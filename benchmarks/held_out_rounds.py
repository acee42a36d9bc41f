"""Did a `seal-env train` run learn? Held-out reward and score per round, with bootstrap intervals.

Reads the log of a finished (or stopped) run folder and reports (through
:func:`agents.held_out.held_out_rounds`, which the training job's plot and last lines use too), for
every round's held-out evaluation (the same held-out contexts each round, never trained on):

* mean reward and mean score (the adapted inner model's score; an unusable self-edit counts with the
  baseline's), each with a 95% bootstrap interval over held-out contexts (a context's samples are
  averaged first: they share a context, so they are not independent);
* the paired difference from round 0 (the untrained generator) over the same contexts;
* the share of unusable self-edits, and the mean length of the self-edits (lines, characters).

Prints a markdown table and writes it with the numbers as JSON::

    python benchmarks/held_out_rounds.py --run-dir runs/rest-em-long --out results/rest_em_long

It only reads: a last line cut short (a crash's, or one being written by a run still going) is
ignored and left in the file, so it can also look at a run in progress (its finished rounds).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from _common import format_interval, markdown_table, run_summary_main

from agents.held_out import held_out_rounds
from agents.run_log import RunLog


def summarise(run_dir: Path, *, n_resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    log = RunLog(run_dir)
    log.read(repair=False)  # never write to the run's log
    if not log.rounds:
        raise ValueError(f"{run_dir}: no finished round in the log")
    rounds = held_out_rounds(log, n_resamples=n_resamples, seed=seed)
    return {"run": str(run_dir), "n_held_out_contexts": rounds[0]["n_contexts"], "rounds": rounds}


def markdown(summary: dict[str, Any]) -> str:
    header = [
        "round",
        "held-out reward",
        "Δ reward vs round 0",
        "held-out score",
        "Δ score vs round 0",
        "unusable",
        "lines / self-edit",
        "chars / self-edit",
    ]
    rows = []
    for entry in summary["rounds"]:
        delta = lambda name: format_interval(entry[name], digits=3) if name in entry else "—"  # noqa: E731
        rows.append(
            [
                entry["round"],
                format_interval(entry["reward"], digits=3),
                delta("reward_vs_round_0"),
                format_interval(entry["score"], digits=3),
                delta("score_vs_round_0"),
                f"{entry['errors']:.0%}",
                f"{entry['lines']:.1f}",
                f"{entry['chars']:.0f}",
            ]
        )
    return markdown_table(header, rows)


def main(argv: Sequence[str] | None = None) -> int:
    return run_summary_main("held_out_rounds", __doc__.split("\n\n")[0], summarise, markdown, argv)


if __name__ == "__main__":
    sys.exit(main())
