"""What a training run reports besides its log: per-round metrics (the means of its steps), the
metrics file, the text table, the progress plot and TensorBoard."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from agents.base import EVAL, TRAIN, StepRecord

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "progress.png"


def step_score(record: StepRecord) -> float | None:
    """The score a step left the model with: the baseline's when the self-edit was unusable (the model
    was not changed), so that a generator writing unusable self-edits does not look good."""
    score = record.info.get("score")
    return record.info.get("baseline_score") if score is None else score


def summarize(records: Sequence[StepRecord], prefix: str) -> dict[str, float]:
    """Mean reward, score and gain over a phase's records, and the share of unusable self-edits."""
    scores = [s for s in map(step_score, records) if s is not None]
    gains = [s - r.info["baseline_score"] for s, r in zip(map(step_score, records), records) if s is not None]
    return {
        f"{prefix}/reward": float(np.mean([r.reward for r in records])),
        f"{prefix}/score": float(np.mean(scores)) if scores else math.nan,
        f"{prefix}/gain": float(np.mean(gains)) if gains else math.nan,
        f"{prefix}/errors": float(np.mean([r.info.get("error") is not None for r in records])),
    }


class RunReport:
    """Everything the main process writes besides the log: metrics, table, plot, TensorBoard."""

    def __init__(self, directory: Path, enabled: bool):
        self.directory = directory
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(directory / "tensorboard"))

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(name, value, step)
            self.writer.flush()

    def round_finished(self, history: list[dict[str, Any]], held_out: Sequence[dict[str, Any]] = ()) -> None:
        """Write the metrics, table and plot of the finished rounds; ``held_out`` (the entries of
        :func:`agents.held_out.held_out_rounds`) gives the plot its held-out intervals."""
        if not self.enabled:
            return
        latest = history[-1]
        self.scalars({k: v for k, v in latest.items() if k != "round"}, latest["round"])
        write_atomic(self.directory / METRICS_FILE, "".join(json.dumps(m) + "\n" for m in history))
        tqdm.write(format_table(history))
        plot_progress(history, self.directory / PLOT_FILE, held_out)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_atomic(path: Path, text: str) -> None:
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def format_table(history: Sequence[dict[str, Any]]) -> str:
    """The metrics of every finished round as a text table, one row per round."""
    columns = ["round"] + sorted({k for m in history for k in m if k != "round"}, key=_column_order)
    rows = [[_cell(m.get(c)) for c in columns] for m in history]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _column_order(name: str) -> tuple[int, str]:
    return ({"train": 0, "agent": 1, "eval": 2}.get(name.split("/")[0], 3), name)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def plot_progress(history: Sequence[dict[str, Any]], path: Path, held_out: Sequence[dict[str, Any]] = ()) -> None:
    """Mean reward (left) and mean score (middle) per round, train and held-out, as a PNG. With
    ``held_out`` (:func:`agents.held_out.held_out_rounds`), the held-out means carry their 95%
    bootstrap intervals over contexts, and a third panel shows the paired change of the held-out
    score from round 0, the number that says whether the generator learnt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 if held_out else 2, figsize=(15 if held_out else 10, 4))
    reward_ax, score_ax = axes[0], axes[1]
    for ax, metric in ((reward_ax, "reward"), (score_ax, "score")):
        points = [(m["round"], m[f"{TRAIN}/{metric}"]) for m in history if f"{TRAIN}/{metric}" in m]
        if points:
            ax.plot(*zip(*points), "o--", label="training samples")
        if held_out:
            _interval_bars(ax, [(e["round"], e[metric]) for e in held_out], label="held-out (95% interval over contexts)")
        else:
            points = [(m["round"], m[f"{EVAL}/{metric}"]) for m in history if f"{EVAL}/{metric}" in m]
            if points:
                ax.plot(*zip(*points), "s-", label="held-out")
        ax.set_xlabel("round")
        ax.set_ylabel(f"mean {metric}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    reward_ax.set_title("reward (1 = beat the baseline)")
    score_ax.set_title("score of the adapted inner model")
    if held_out:
        change_ax = axes[2]
        no_change = {"mean": 0.0, "low": 0.0, "high": 0.0}  # round 0 against itself
        _interval_bars(change_ax, [(e["round"], e.get("score_vs_round_0", no_change)) for e in held_out],
                       label="held-out, paired (95% interval)", color="tab:green")
        change_ax.axhline(0.0, color="grey", linewidth=1)
        change_ax.set_xlabel("round")
        change_ax.set_ylabel("score minus round 0's")
        change_ax.xaxis.get_major_locator().set_params(integer=True)
        change_ax.grid(alpha=0.3)
        change_ax.legend()
        change_ax.set_title("held-out score change from round 0")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _interval_bars(ax: Any, points: Sequence[tuple[int, dict[str, float]]], **style: Any) -> None:
    """Means with their ``{mean, low, high}`` intervals as error bars, one point per round."""
    means = np.array([interval["mean"] for _, interval in points])
    spread = np.array([[m - i["low"], i["high"] - m] for m, (_, i) in zip(means, points)]).T
    ax.errorbar([r for r, _ in points], means, yerr=spread, fmt="s-", capsize=4, **style)
