"""What the self-edits of knowledge-benchmark rows look like, and which of their traits go with the answers.

A generator can only learn what its kept samples share, and the evaluation only rewards what moves
the closed-book answers. This reads the logs of ``knowledge_incorporation.py`` runs (single-passage
mode) and reports, per row, with 95% bootstrap intervals over passages (a passage's self-edits are
averaged first, and every passage counts once, where the benchmark's own table weights passages by
their questions):

* ``lines``, ``chars`` and ``tokens`` - non-empty lines, characters and tokens per self-edit, and
  ``at_limit`` - the share of self-edits that reach the run's sampling limit (``sample_tokens``): cut
  off rather than finished, for sampled rows;
* ``overlap`` - the share of a self-edit's words found in its passage (how much of it is copied);
* ``coverage`` - the share of the passage's distinct words the self-edit carries (how much of the
  passage it brings);
* ``repetition`` - the share of the self-edit's word trigrams that repeat an earlier one of it (how
  much of its length restates itself);
* ``contains`` and ``log_likelihood`` - the row's answer containment and gold log-likelihood per
  token after its updates (as the benchmark's own table);

and, for rows with several self-edits per passage (``--self-edits-per-passage``), the correlations
*among one passage's self-edits* (each passage's means subtracted, what best-of-k selection acts on)
of coverage, length in tokens and repetition with containment and with the gold log-likelihood, and of
the two measures with each other. Unusable self-edits (an error, no update) are left out::

    python benchmarks/self_edit_traits.py --data ../shared/data/squad_eval_passages.json \\
        --runs results/learning_run/eval_50_rewrite_plus_ll_k3,results/learning_run/eval_50_restatement \\
        --out results/learning_run/self_edit_traits

Only reads the runs' logs; prints a markdown table and, with ``--out``, writes it with the numbers as
``self_edit_traits.json`` / ``.md``.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from _common import (bootstrap_ci, file_digest, finite_or_none, format_interval, main_exit_code, markdown_table, print_or_write,
                     trigram_repetition, within_group_r, word_coverage, word_overlap)
from _knowledge_report import read_run
from transformers import PreTrainedTokenizerBase

from seal_env.config_cli import parse_config
from seal_env.models import load_tokenizer
from seal_env.tasks.knowledge import load_passages

TRAITS = ("lines", "chars", "tokens", "at_limit", "overlap", "coverage", "repetition", "contains", "log_likelihood")
# Decoding a sample and tokenising the text again can merge or split a token or two at its edges.
LIMIT_SLACK = 2
# (x, y) pairs whose within-passage correlation is reported.
CORRELATIONS = (("coverage", "contains"), ("coverage", "log_likelihood"), ("tokens", "contains"), ("tokens", "log_likelihood"),
                ("repetition", "contains"), ("repetition", "log_likelihood"), ("log_likelihood", "contains"))


@dataclass
class TraitsConfig:
    """Settings of a report; the command line maps one to one onto these fields."""

    data: Path
    """The passages JSON the runs evaluated (its digest must match theirs)."""
    runs: list[Path] = field(default_factory=list,
                             metadata={"parse": lambda text: [Path(t.strip()) for t in text.split(",") if t.strip()]})
    """Knowledge-benchmark output folders (comma-separated)."""
    out: Path | None = None
    """Folder for ``self_edit_traits.json`` and ``.md`` (default: print only)."""
    model: str | None = None
    """Model whose tokenizer counts tokens (default: the embedded SmolLM2-135M-Instruct, which the runs sampled)."""
    bootstrap_resamples: int = 10_000
    """Bootstrap resamples of every interval."""
    seed: int = 0
    """Seeds the bootstrap."""


def self_edit_traits(text: str, context: str, metrics: dict[str, float], n_tokens: int, sample_tokens: int | None
                     ) -> dict[str, float]:
    """One stepped self-edit's traits (see the module docstring)."""
    at_limit = sample_tokens is not None and n_tokens >= sample_tokens - LIMIT_SLACK
    return {"lines": float(sum(1 for line in text.splitlines() if line.strip())), "chars": float(len(text)),
            "tokens": float(n_tokens), "at_limit": float(at_limit),
            "overlap": word_overlap(text, context), "coverage": word_coverage(text, context),
            "repetition": trigram_repetition(text),
            "contains": float(metrics["contains"]), "log_likelihood": float(metrics["log_likelihood"])}


def row_summary(per_passage: dict[int, list[dict[str, float]]], *, n_resamples: int, seed: int) -> dict[str, Any]:
    """Interval of each trait over passages and the within-passage correlations of one row."""
    passages = [p for p, edits in sorted(per_passage.items()) if edits]
    summary: dict[str, Any] = {
        "n_passages": len(passages),
        "n_self_edits": sum(len(per_passage[p]) for p in passages),
    }
    for trait in TRAITS:
        means = [statistics.fmean(e[trait] for e in per_passage[p]) for p in passages]
        summary[trait] = bootstrap_ci(means, n_resamples=n_resamples, seed=seed).to_dict() if means else None
    for x, y in CORRELATIONS:
        # None with one self-edit per passage: nothing to compare.
        summary[f"{x}_{y}_r"] = finite_or_none(within_group_r([[(e[x], e[y]) for e in per_passage[p]] for p in passages]))
    return summary


def report(config: TraitsConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> dict[str, Any]:
    if not config.runs:
        raise ValueError("no runs: give --runs FOLDER,...")
    passages = load_passages(config.data)
    if tokenizer is None:
        tokenizer = load_tokenizer(config.model)
    digest = file_digest(config.data)
    rows = []
    for folder in config.runs:
        settings, records = read_run(folder)
        if settings.get("data_sha256") != digest:
            raise ValueError(f"{folder} evaluated other data than {config.data} (data_sha256 differs)")
        by_row: dict[str, dict[int, list[dict[str, float]]]] = {}
        for (row, passage), record in records.items():  # rows in the order the run logged them
            edits = by_row.setdefault(row, {}).setdefault(passage, [])
            for step in record.get("self_edits", []):
                if step.get("error") is None and step.get("metrics"):
                    n_tokens = len(tokenizer(step["text"], add_special_tokens=False)["input_ids"])
                    edits.append(self_edit_traits(step["text"], passages[passage].context, step["metrics"], n_tokens,
                                                  settings.get("sample_tokens")))
        for row, per_passage in by_row.items():
            rows.append({"run": str(folder), "row": row,
                         **row_summary(per_passage, n_resamples=config.bootstrap_resamples, seed=config.seed)})
    return {"data": str(config.data), "rows": rows}


def markdown(summary: dict[str, Any]) -> str:
    def cell(entry: dict[str, float] | None, scale: float = 1.0, digits: int = 2) -> str:
        return "—" if entry is None else format_interval(entry, scale=scale, digits=digits)

    def r(value: float | None) -> str:
        return "—" if value is None else f"{value:+.2f}"

    def label(trait: str) -> str:
        return {"log_likelihood": "log-lik"}.get(trait, trait)

    header = ["row (run)", "passages", "self-edits", "lines", "chars", "tokens", "at the sampling limit %", "word overlap",
              "coverage", "trigram repetition", "contains answer %", "gold log-lik / token",
              *(f"r {label(x)}-{label(y)}" for x, y in CORRELATIONS)]
    body = [[f"{s['row']} ({s['run']})", s["n_passages"], s["n_self_edits"], cell(s["lines"], digits=1),
             cell(s["chars"], digits=0), cell(s["tokens"], digits=0), cell(s["at_limit"], 100.0, 0), cell(s["overlap"]),
             cell(s["coverage"]), cell(s["repetition"]), cell(s["contains"], 100.0, 1),
             cell(s["log_likelihood"]), *(r(s[f"{x}_{y}_r"]) for x, y in CORRELATIONS)]
            for s in summary["rows"]]
    return ("Per self-edit, means over passages with 95% bootstrap intervals; r: correlation among one passage's "
            "self-edits (within passage).\n\n" + markdown_table(header, body))


def main(argv: Sequence[str] | None = None, tokenizer: PreTrainedTokenizerBase | None = None) -> int:
    config = parse_config(TraitsConfig, argv, __doc__.split("\n\n")[0], required=("data", "runs"))

    def work() -> None:
        summary = report(config, tokenizer)
        print_or_write("self_edit_traits", config.out, summary, markdown(summary))

    return main_exit_code("self_edit_traits", work)


if __name__ == "__main__":
    sys.exit(main())
