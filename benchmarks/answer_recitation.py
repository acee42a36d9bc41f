"""How often the adapted model answers by reciting its passage, and what reciting buys in containment.

A closed-book answer "contains" the gold answer when the answer string occurs anywhere in the first
``max_answer_tokens`` tokens the model writes. A model updated hard on its passage may answer any
question by reciting a sentence of it, which contains the gold answer whenever the recited sentence
happens to hold it. This reads the logs of ``knowledge_incorporation.py`` runs (single-passage mode,
whose records keep every question's greedy answer) and reports, per row, with 95% bootstrap
intervals over passages (and, over the rows, the correlation of their reciting and containment):

* ``recites`` - the share of answers that contain a run of ``--min-words`` consecutive words of the
  passage (lower-cased alphanumeric runs);
* ``contains`` - the share of answers that contain the gold answer, among all answers, among the
  reciting ones and among the others;
* ``log_likelihood`` - the gold answer's mean log-likelihood per token, for the questions whose greedy
  answer recites and for the others (each question's likelihood is measured on the gold answer, not
  on what the model wrote).

Answers are pooled over a passage's self-edits; a conditional share's interval resamples passages
and weighs each by its answers in the condition. With ``--reference RUN:ROW``, every row's recitation
and containment is also paired with that row's on the passages both have::

    python benchmarks/answer_recitation.py --data ../shared/data/squad_eval_passages.json \\
        --rows results/learning_run/eval_50_rewrite_plus_recall_k3:untrained,results/learning_run/eval_50_rewrite_plus_recall_k3:generator \\
        --reference results/learning_run/eval_50_rewrite_plus_recall_k3:untrained --out results/learning_run/answer_recitation

Only reads the runs' logs; prints a markdown table and, with ``--out``, writes it with the numbers as
``answer_recitation.json`` / ``.md``.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from _common import (bootstrap_ci, file_digest, finite_or_none, format_interval, main_exit_code, markdown_table, pearson,
                     print_or_write, words)
from _knowledge_report import check_same_measurement, parse_run_row, read_run

from seal_env.config_cli import parse_config
from seal_env.tasks.knowledge import load_passages


def recites(answer: str, passage: str, min_words: int) -> bool:
    """Whether ``answer`` holds ``min_words`` consecutive words (lower-cased alphanumeric runs) of ``passage``."""
    answer_words = words(answer)
    text = f" {' '.join(words(passage))} "
    return any(f" {' '.join(answer_words[i:i + min_words])} " in text for i in range(len(answer_words) - min_words + 1))


@dataclass
class RecitationConfig:
    """Settings of a report; the command line maps one to one onto these fields."""

    data: Path
    """The passages JSON the runs evaluated (its digest must match theirs)."""
    rows: list[tuple[Path, str]] = field(
        default_factory=list, metadata={"parse": lambda text: [parse_run_row(t) for t in text.split(",") if t.strip()]}
    )
    """``RUN_FOLDER:ROW,...``: the rows to report."""
    reference: tuple[Path, str] | None = field(default=None, metadata={"parse": parse_run_row})
    """``RUN_FOLDER:ROW``: pair every row's recitation and containment with this row's (default: none)."""
    out: Path | None = None
    """Folder for ``answer_recitation.json`` and ``.md`` (default: print only)."""
    min_words: int = 6
    """Consecutive passage words an answer must hold to count as reciting."""
    bootstrap_resamples: int = 10_000
    """Bootstrap resamples of every interval."""
    seed: int = 0
    """Seeds the bootstrap."""

    def __post_init__(self) -> None:
        if self.min_words < 2:
            raise ValueError(f"--min-words must be at least 2, got {self.min_words}")


def passage_answers(record: dict[str, Any], passage: str, min_words: int) -> list[tuple[bool, float, float]]:
    """``(recites, contains, gold log-likelihood)`` of every answer of a logged (row, passage) record,
    over its usable self-edits."""
    return [(recites(item["prediction"], passage, min_words), float(item["contains"]), float(item["log_likelihood"]))
            for step in record.get("self_edits", []) if step.get("error") is None for item in step.get("items", [])]


def _share(per_passage: list[list[tuple[bool, float, float]]], value: int, keep: Any, config: RecitationConfig
           ) -> dict[str, float] | None:
    """Mean of field ``value`` over the answers ``keep`` selects, pooled within passages, with a
    bootstrap interval over the passages that have any (weighed by how many they have)."""
    groups = [[a[value] for a in answers if keep(a)] for answers in per_passage]
    groups = [g for g in groups if g]
    if not groups:
        return None
    return bootstrap_ci([statistics.fmean(g) for g in groups], [len(g) for g in groups],
                        n_resamples=config.bootstrap_resamples, seed=config.seed).to_dict()


def _row_answers(folder: Path, row: str, config: RecitationConfig, contexts: list[str], digest: str
                 ) -> tuple[dict[str, Any], dict[int, list[tuple[bool, float, float]]]]:
    """``(the run's settings, {passage: its answers})`` of one row."""
    settings, records = read_run(folder)
    if settings.get("data_sha256") != digest:
        raise ValueError(f"{folder} evaluated other data than {config.data} (data_sha256 differs)")
    answers = {p: passage_answers(r, contexts[p], config.min_words) for (key, p), r in sorted(records.items()) if key == row}
    answers = {p: a for p, a in answers.items() if a}
    if not answers:
        raise ValueError(f"{folder}: row {row!r} has no logged answers")
    return settings, answers


def report(config: RecitationConfig) -> dict[str, Any]:
    if not config.rows:
        raise ValueError("no rows: give --rows RUN_FOLDER:ROW,...")
    contexts = [p.context for p in load_passages(config.data)]
    digest = file_digest(config.data)
    ref_settings, reference = _row_answers(*config.reference, config, contexts, digest) if config.reference else ({}, None)
    rows = []
    for folder, row in config.rows:
        settings, answers = _row_answers(folder, row, config, contexts, digest)
        groups = list(answers.values())
        summary: dict[str, Any] = {
            "run": str(folder), "row": row, "n_passages": len(groups), "n_answers": sum(map(len, groups)),
            "recites": _share(groups, 0, lambda a: True, config),
            "contains": _share(groups, 1, lambda a: True, config),
            "contains_reciting": _share(groups, 1, lambda a: a[0], config),
            "contains_other": _share(groups, 1, lambda a: not a[0], config),
            "log_likelihood_reciting": _share(groups, 2, lambda a: a[0], config),
            "log_likelihood_other": _share(groups, 2, lambda a: not a[0], config),
        }
        if reference is not None:
            check_same_measurement(settings, ref_settings, folder, config.reference[0])
            common = sorted(set(answers) & set(reference))
            if not common:
                raise ValueError(f"{folder}: row {row!r} has no passage in common with the reference")
            for name, value in (("recites", 0), ("contains", 1)):
                # paired per passage: the difference of the two rows' shares, weighed by the row's answers
                diffs = [statistics.fmean(a[value] for a in answers[p]) - statistics.fmean(a[value] for a in reference[p])
                         for p in common]
                summary[f"delta_{name}"] = bootstrap_ci(diffs, [len(answers[p]) for p in common],
                                                        n_resamples=config.bootstrap_resamples, seed=config.seed).to_dict()
            summary["n_common_passages"] = len(common)
        rows.append(summary)
    return {"data": str(config.data), "min_words": config.min_words,
            "reference": None if config.reference is None else f"{config.reference[0]}:{config.reference[1]}",
            # does a row's containment follow how often its answers recite? (None with fewer than 3 rows)
            "rows_recites_contains_r": finite_or_none(pearson([r["recites"]["mean"] for r in rows],
                                                              [r["contains"]["mean"] for r in rows])),
            "rows": rows}


def markdown(summary: dict[str, Any]) -> str:
    def cell(entry: dict[str, float] | None, scale: float = 100.0, digits: int = 1) -> str:
        return "—" if entry is None else format_interval(entry, scale=scale, digits=digits)

    paired = summary["reference"] is not None
    header = ["row (run)", "passages", "answers", "reciting %", "contains answer %", "contains | reciting %",
              "contains | other %", "gold log-lik | reciting", "gold log-lik | other"]
    if paired:
        header += ["Δ reciting %", "Δ contains answer %"]
    body = []
    for s in summary["rows"]:
        line = [f"{s['row']} ({s['run']})", s["n_passages"], s["n_answers"], cell(s["recites"]), cell(s["contains"]),
                cell(s["contains_reciting"]), cell(s["contains_other"]), cell(s["log_likelihood_reciting"], 1.0, 2),
                cell(s["log_likelihood_other"], 1.0, 2)]
        if paired:
            line += [cell(s["delta_recites"]), cell(s["delta_contains"])]
        body.append(line)
    note = f"; Δ: paired with {summary['reference']} over the passages both have" if paired else ""
    r = summary["rows_recites_contains_r"]
    across = "" if r is None else f" Across the rows, reciting and containment correlate at r = {r:+.2f}."
    return (f"An answer recites when it holds {summary['min_words']} consecutive words of its passage. Shares of "
            f"answers pooled within passages, 95% bootstrap intervals over passages{note}.{across}\n\n"
            + markdown_table(header, body))


def main(argv: Sequence[str] | None = None) -> int:
    def work() -> None:
        config = parse_config(RecitationConfig, argv, __doc__.split("\n\n")[0], required=("data", "rows"))
        summary = report(config)
        print_or_write("answer_recitation", config.out, summary, markdown(summary))

    return main_exit_code("answer_recitation", work)


if __name__ == "__main__":
    sys.exit(main())
