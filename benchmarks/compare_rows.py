"""Paired differences between rows of two knowledge-benchmark runs on the same passages.

``knowledge_incorporation.py`` pairs rows within one run (each row against the passage alone, the
trained generator against the untrained one). This pairs rows that were measured in different runs:
for instance the external self-edit sets of the 50-passage run against the untrained model's rewrites
of a generator's evaluation, to see how large a difference the evaluation can resolve. Both runs must
have evaluated the same data with the same model, inner loop and answer length (so the same
self-edit gets the same update and the same answers); anything else in their settings, such as how
self-edits were sampled, may differ. Two passages files that hold the same passages and differ only in
their ``self_edits`` sets (one written by ``derive_self_edits.py``, say) count as the same data when
both are given with ``--data``. Each difference is the question-weighted mean over the passages
both runs have, with the benchmark's bootstrap interval over passages::

    python benchmarks/compare_rows.py --reference results/learning_run/eval_50_rewrite:untrained \\
        --rows results/knowledge:seal-iter2-qwen2.5-7b,results/knowledge:gpt-4.1 \\
        --out results/learning_run/external_vs_untrained_rewrites

Only reads the runs' ``single.log.jsonl``; prints a markdown table and, with ``--out``, writes it with
the numbers as ``compare_rows.json`` / ``.md``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from _common import file_digest, main_exit_code, markdown_table, print_or_write
from _knowledge_report import (METRIC_LABELS, METRICS, check_same_measurement, metric_cells, paired_difference, parse_run_row,
                               passages_digest, read_run)
from seal_env.config_cli import parse_config

@dataclass
class CompareConfig:
    """Settings of a comparison; the command line maps one to one onto these fields."""

    reference: tuple[Path, str] = field(metadata={"parse": parse_run_row})
    """``RUN_FOLDER:ROW``: the row every other one is compared with."""
    rows: list[tuple[Path, str]] = field(
        default_factory=list, metadata={"parse": lambda text: [parse_run_row(t) for t in text.split(",") if t.strip()]}
    )
    """``RUN_FOLDER:ROW,...``: the rows to compare with the reference."""
    data: list[Path] = field(
        default_factory=list, metadata={"parse": lambda text: [Path(t.strip()) for t in text.split(",") if t.strip()]}
    )
    """Passages files the runs evaluated (comma-separated): runs of files with the same passages,
    whose ``self_edits`` sets differ, are paired (default: the runs' data must be the same file)."""
    out: Path | None = None
    """Folder for ``compare_rows.json`` and ``.md`` (default: print only)."""
    bootstrap_resamples: int = 10_000
    """Bootstrap resamples of every interval."""
    seed: int = 0
    """Seeds the bootstrap."""


def compare(config: CompareConfig) -> dict[str, Any]:
    """Each row's paired difference from the reference row, over the passages both have."""
    runs: dict[Path, tuple[dict[str, Any], dict[tuple[str, int], dict[str, Any]]]] = {}
    for folder, _ in [config.reference, *config.rows]:
        if folder not in runs:
            runs[folder] = read_run(folder)
    if not config.rows:
        raise ValueError("no rows to compare: give --rows RUN_FOLDER:ROW,...")
    # a data file's digest -> the digest of its passages without their self-edit sets
    same_passages = {file_digest(path): passages_digest(path) for path in config.data}

    def measured_as(settings: dict[str, Any]) -> dict[str, Any]:
        """The settings to compare: a given data file stands for its passages."""
        return {**settings, "data_sha256": same_passages.get(settings.get("data_sha256"), settings.get("data_sha256"))}

    ref_folder, ref_row = config.reference
    ref_settings, ref_records = runs[ref_folder]
    reference = {p: r for (row, p), r in ref_records.items() if row == ref_row}
    if not reference:
        raise ValueError(f"{ref_folder}: no row {ref_row!r}")
    comparisons = []
    for folder, row in config.rows:
        settings, records = runs[folder]
        check_same_measurement(measured_as(settings), measured_as(ref_settings), folder, ref_folder)
        measured = {p: r for (key, p), r in records.items() if key == row}
        passages = sorted(set(measured) & set(reference))
        if not passages:
            raise ValueError(f"{folder}: row {row!r} has no passage in common with the reference")
        diff = paired_difference(
            [measured[p] for p in passages],
            [reference[p] for p in passages],
            n_resamples=config.bootstrap_resamples,
            seed=config.seed,
        )
        comparisons.append({"run": str(folder), "row": row, "n_passages": len(passages), "difference": diff})
    return {"reference": {"run": str(ref_folder), "row": ref_row}, "settings": ref_settings, "rows": comparisons}


def markdown(summary: dict[str, Any]) -> str:
    ref = summary["reference"]
    header = ["row", "passages", *(f"Δ {METRIC_LABELS[m]}" for m in METRICS)]
    body = [[f"{c['row']} ({c['run']})", c["n_passages"], *metric_cells(c["difference"])] for c in summary["rows"]]
    return (f"Paired difference from {ref['row']} ({ref['run']}); question-weighted means, 95% bootstrap "
            f"intervals over passages:\n\n") + markdown_table(header, body)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(CompareConfig, argv, __doc__.split("\n\n")[0], required=("reference", "rows"))

    def work() -> None:
        summary = compare(config)
        print_or_write("compare_rows", config.out, summary, markdown(summary))

    return main_exit_code("compare_rows", work)


if __name__ == "__main__":
    sys.exit(main())
