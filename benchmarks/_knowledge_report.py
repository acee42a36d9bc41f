"""Tables and plots of the knowledge-incorporation benchmark (``knowledge_incorporation.py``)."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from _common import bootstrap_ci, format_interval, markdown_table
from seal_env.jsonl import read_jsonl, split_header

LOG_NAME = "single.log.jsonl"

METRICS = ("exact_match", "f1", "contains", "log_likelihood")
METRIC_LABELS = {
    "exact_match": "exact match %",
    "f1": "token F1 %",
    "contains": "contains answer %",
    "log_likelihood": "gold log-lik / token",
}


# What decides a self-edit's update and its answers: runs that differ here measure different things.
MEASUREMENT_SETTINGS = ("data_sha256", "model", "inner_loop", "max_answer_tokens", "mode")


def check_same_measurement(settings: dict[str, Any], reference: dict[str, Any], folder: Path, reference_folder: Path) -> None:
    """``ValueError`` unless two runs' logged settings measure alike (:data:`MEASUREMENT_SETTINGS`), so
    that their rows may be paired by passage; how their self-edits were sampled may differ."""
    differ = [k for k in MEASUREMENT_SETTINGS if settings.get(k) != reference.get(k)]
    if differ:
        raise ValueError(f"{folder} and {reference_folder} measured differently ({', '.join(differ)} differ)")


def passages_digest(path: Path) -> str:
    """SHA-256 of a passages file's passages without their ``self_edits`` sets: what decides the
    questions, answers and passage updates a run measures."""
    passages = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(passages, list):
        raise ValueError(f"{path}: expected a list of passages")
    measured = [{k: v for k, v in p.items() if k != "self_edits"} if isinstance(p, dict) else p for p in passages]
    return hashlib.sha256(json.dumps(measured, sort_keys=True).encode()).hexdigest()


def parse_run_row(text: str) -> tuple[Path, str]:
    """``RUN_FOLDER:ROW`` (a command-line argument) as ``(folder, row)``."""
    folder, sep, row = text.strip().rpartition(":")
    if not sep or not folder or not row:
        raise argparse.ArgumentTypeError(f"expected RUN_FOLDER:ROW, got {text!r}")
    return Path(folder), row


def data_index(settings: dict[str, Any], entry: dict[str, Any]) -> int:
    """The index in the data file of a logged entry's passage: a run started with ``--first-passage N``
    logs its passages from 0."""
    return settings.get("first_passage", 0) + entry["passage"]


def read_run(folder: Path) -> tuple[dict[str, Any], dict[tuple[str, int], dict[str, Any]]]:
    """``(settings, {(row, passage): record})`` of a single-mode run's log, ``passage`` the index in the
    data file (:func:`data_index`); a last line cut short by a run still writing is left out."""
    path = folder / LOG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no knowledge-benchmark log (run knowledge_incorporation.py --out {folder})")
    settings, entries = split_header(read_jsonl(path, repair=False), path)  # read-only: the run may still be writing
    records = {(entry["row"], data_index(settings, entry)): entry for entry in entries if "row" in entry and "passage" in entry}
    if settings.get("mode") != "single":
        raise ValueError(f"{path}: a {settings.get('mode')!r} run; only single-passage runs pair by passage")
    return settings, records


def _scale(metric: str) -> tuple[float, int]:
    """``(scale, digits)`` for printing a metric: text metrics as percentages, log-likelihood raw."""
    return (1.0, 2) if metric == "log_likelihood" else (100.0, 1)


def metric_cells(intervals: dict[str, dict[str, float]]) -> list[str]:
    """Table cells of intervals, one per metric in :data:`METRICS` order (text metrics as percentages)."""
    return [format_interval(intervals[m], scale=_scale(m)[0], digits=_scale(m)[1]) for m in METRICS]


def paired_difference(
    records: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]], *, n_resamples: int, seed: int
) -> dict[str, dict[str, float]]:
    """Per metric, the mean of ``records`` minus ``reference`` (logged single-mode records of the same
    passages, in the same order), weighted by each passage's questions, with a bootstrap interval
    over passages."""
    weights = [r["n_questions"] for r in records]
    return {
        m: bootstrap_ci(
            [r["metrics"][m] - p["metrics"][m] for r, p in zip(records, reference, strict=True)],
            weights,
            n_resamples=n_resamples,
            seed=seed,
        ).to_dict()
        for m in METRICS
    }


def markdown_results(summary: dict[str, Any]) -> str:
    """The single / cpt table (percentages for the text metrics), then paired gains over the passage."""
    paper = summary["paper"]
    header = ["row", "n", *(METRIC_LABELS[m] for m in METRICS), "s / passage (median)", f"paper: {paper['setting']}"]
    body = [
        [
            row["name"] + (f" ({row['n_errors']} unusable self-edits)" if row["n_errors"] else ""),
            row["n_passages"],
            *metric_cells(row["metrics"]),
            f"{row['seconds_per_passage']['median']:.1f}",
            "—" if row["paper_accuracy"] is None else f"{row['paper_accuracy']:.1f}",
        ]
        for row in summary["rows"]
    ]
    text = markdown_table(header, body)
    paired = [r for r in summary["rows"] if "vs_passage" in r]
    if paired:
        text += "\nPaired difference from training on the passage only (same passages; 95% bootstrap interval):\n\n"
        header = ["row", *(f"Δ {METRIC_LABELS[m]}" for m in METRICS)]
        text += markdown_table(header, [[r["name"], *metric_cells(r["vs_passage"])] for r in paired])
    trained = [r for r in summary["rows"] if "vs_untrained" in r]
    if trained:
        text += ("\nPaired difference of the trained generator's self-edits from the untrained model's (same "
                 "passages; 95% bootstrap interval):\n\n")
        header = ["row", *(f"Δ {METRIC_LABELS[m]}" for m in METRICS)]
        text += markdown_table(header, [[r["name"], *metric_cells(r["vs_untrained"])] for r in trained])
    return text


def markdown_continual(summary: dict[str, Any]) -> str:
    """Per row and metric: the base score, the score right after learning a passage, the score at
    the end of the stream, and the forgetting (mean drop from just-learnt to end)."""
    body = []
    for row in summary["rows"]:
        for m in METRICS:
            s, (scale, digits) = row["summary"][m], _scale(m)
            values = [f"{s[k] * scale:.{digits}f}" for k in ("base", "just_learnt", "at_end", "forgetting")]
            body.append([row["name"], METRIC_LABELS[m], *values])
    return markdown_table(["row", "metric", "base", "just learnt", "end of stream", "forgetting"], body)


def plot_bars(summary: dict[str, Any], path: Path) -> None:
    """Grouped bars with 95% intervals: text metrics (%) on the left, log-likelihood on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 1.3]})
    text_metrics = [m for m in METRICS if m != "log_likelihood"]
    width = 0.8 / len(rows)
    for r, row in enumerate(rows):
        x = np.arange(len(text_metrics)) + (r - (len(rows) - 1) / 2) * width
        iv = [row["metrics"][m] for m in text_metrics]
        means = np.array([v["mean"] for v in iv]) * 100
        errors = np.array([[v["mean"] - v["low"] for v in iv], [v["high"] - v["mean"] for v in iv]]) * 100
        left.bar(x, means, width, yerr=errors, capsize=2, label=row["name"], color=f"C{r}")
        ll = row["metrics"]["log_likelihood"]
        # points, not bars: log-likelihoods are negative and bars from 0 would hide the differences
        ll_error = [[ll["mean"] - ll["low"]], [ll["high"] - ll["mean"]]]
        right.errorbar(r, ll["mean"], yerr=ll_error, fmt="o", capsize=3, color=f"C{r}")
    left.set_xticks(range(len(text_metrics)), [METRIC_LABELS[m] for m in text_metrics])
    left.set_ylabel("% of questions")
    left.legend(fontsize=7)
    right.set_xticks([])
    right.set_xlim(-0.5, len(rows) - 0.5)
    right.set_title(METRIC_LABELS["log_likelihood"] + " (higher is better)", fontsize=9)
    fig.suptitle(f"Knowledge incorporation ({summary['mode']} mode, n={summary['n_passages']} passages, 95% bootstrap CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_heat_maps(summary: dict[str, Any], out: Path) -> None:
    """One PNG per metric, one heat map per row: rows = steps (0 = before any update), columns =
    passages in stream order; a column fading below its diagonal cell is forgetting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    n = summary["n_passages"]
    for m in METRICS:
        fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows) + 1, 3.6), squeeze=False)
        values = [np.array(r["matrix"][m], dtype=float) for r in rows]
        low, high = np.nanmin([np.nanmin(v) for v in values]), np.nanmax([np.nanmax(v) for v in values])
        for ax, row, matrix in zip(axes[0], rows, values):
            image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=low, vmax=high, aspect="auto")
            ax.set_title(row["name"], fontsize=8)
            ax.set_xticks(range(n), [str(j + 1) for j in range(n)], fontsize=7)
            ax.set_yticks(range(n + 1), ["base"] + [f"after {s}" for s in range(1, n + 1)], fontsize=7)
            ax.set_xlabel("passage (stream order)", fontsize=8)
        fig.colorbar(image, ax=axes[0].tolist(), label=METRIC_LABELS[m])
        fig.suptitle(f"Continual incorporation: {METRIC_LABELS[m]} after each update", fontsize=10)
        fig.savefig(out / f"continual_{m}.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
