"""The selection-signal summary (benchmarks/selection_signal.py) on a hand-written run log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import selection_signal  # noqa: E402

from agents.run_log import RunLog  # noqa: E402


def _step(context: int, sample: int, score: float | None, reward: float, own: float, control: float, lines: int) -> dict:
    """A logged knowledge step whose update moved its own answers by ``own`` and other passages'
    answers by ``-control`` (baseline log-likelihoods -3 and -9)."""
    info = {"error": None if score is not None else "unusable", "score": score, "gain": None if score is None else score - 1.0,
            "n_train_examples": lines,
            "metrics": {"log_likelihood": -3.0 + own, "control_log_likelihood": -9.0 - control},
            "baseline_metrics": {"log_likelihood": -3.0, "control_log_likelihood": -9.0}}
    return {"round": 1, "phase": "train", "context_index": context, "sample": sample, "prompt": "Passage: copied words",
            "self_edit": ("copied words " if lines == 4 else "new words ") + str(context), "reward": reward, "info": info}


def _write_run(directory: Path, steps: list[dict], agent_config: dict) -> Path:
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"agent_config": agent_config}), encoding="utf-8")
    log = RunLog(directory)
    log.append("round", {"metrics": {"round": 0}})
    for step in steps:
        log.append("step", step)
    return directory


STEPS = [
    # Context 0: the best-scoring rewarded sample (kept) is not the one that taught its answers most.
    _step(0, 0, score=2.0, reward=1.0, own=0.5, control=1.0, lines=4),
    _step(0, 1, score=1.5, reward=1.0, own=1.0, control=0.0, lines=2),
    _step(0, 2, score=0.5, reward=0.0, own=-0.5, control=-0.5, lines=3),
    # Context 1: the kept sample is also the best by its own answers.
    _step(1, 0, score=1.0, reward=1.0, own=0.2, control=0.3, lines=2),
    _step(1, 1, score=0.0, reward=0.0, own=0.0, control=0.1, lines=2),
    # Context 2: one usable sample has no siblings to be compared with; it is left out.
    _step(2, 0, score=1.0, reward=1.0, own=9.0, control=0.0, lines=9),
    _step(2, 1, score=None, reward=0.0, own=0.0, control=0.0, lines=0),
]


def test_selection_statistics_match_a_hand_computation(tmp_path):
    run = _write_run(tmp_path / "run", STEPS, {"keep": "best"})
    summary = selection_signal.summarise(run, n_resamples=200)
    (entry,) = summary["rounds"]
    assert entry["round"] == 1 and entry["n_contexts"] == 2 and entry["n_kept"] == 2
    assert entry["own_gain"]["mean"] == pytest.approx((1 / 3 + 0.1) / 2)
    assert entry["control_part"]["mean"] == pytest.approx((1 / 6 + 0.2) / 2)
    assert entry["kept_own_advantage"]["mean"] == pytest.approx((0.5 - 1 / 3 + 0.1) / 2)
    assert entry["best_own_advantage"]["mean"] == pytest.approx((1.0 - 1 / 3 + 0.1) / 2)
    assert entry["kept_lines_advantage"]["mean"] == pytest.approx((1.0 + 0.0) / 2)
    assert -1.0 <= entry["score_lines_r"] <= 1.0
    # Context 0's kept sample has 2 of its 3 words in its prompt, every other sample 1 of 3.
    assert entry["overlap"]["mean"] == pytest.approx(((2 / 3 + 1 / 3 + 1 / 3) / 3 + 1 / 3) / 2)
    assert entry["kept_overlap_advantage"]["mean"] == pytest.approx((2 / 3 - 4 / 9 + 0) / 2)
    # The prompt has 3 distinct words: the kept sample of context 0 carries 2 of them, every other 1.
    assert entry["coverage"]["mean"] == pytest.approx((4 / 9 + 1 / 3) / 2)
    assert entry["kept_coverage_advantage"]["mean"] == pytest.approx((2 / 3 - 4 / 9 + 0) / 2)
    assert entry["kept_own_advantage"]["low"] <= entry["kept_own_advantage"]["mean"] <= entry["kept_own_advantage"]["high"]


def test_a_run_kept_by_ranks_is_summarised_with_its_own_rule(tmp_path):
    # Ranked by the gold log-likelihood alone, context 0 keeps sample 1, the best by its own answers.
    summary = selection_signal.summarise(_write_run(tmp_path / "run", STEPS, {"keep": "best", "keep_by": ["log_likelihood"]}),
                                         n_resamples=200)
    (entry,) = summary["rounds"]
    assert summary["keep_by"] == ["log_likelihood"]
    assert entry["kept_own_advantage"]["mean"] == pytest.approx(entry["best_own_advantage"]["mean"])
    assert entry["kept_own_advantage"]["mean"] == pytest.approx((1.0 - 1 / 3 + 0.1) / 2)


def test_another_rule_is_recomputed_on_the_same_samples(tmp_path):
    run = _write_run(tmp_path / "run", STEPS, {"keep": "best"})
    summary = selection_signal.summarise(run, n_resamples=200, keep_by=["log_likelihood"])
    assert summary["keep_by"] is None and summary["recomputed_keep_by"] == ["log_likelihood"]
    (entry,) = summary["rounds"]
    assert entry["kept_own_advantage"]["mean"] == pytest.approx(entry["best_own_advantage"]["mean"])
    out = tmp_path / "out"
    assert selection_signal.main(["--run-dir", str(run), "--out", str(out), "--bootstrap-resamples", "100",
                                  "--keep-by", "log_likelihood"]) == 0
    assert "--keep-by log_likelihood` would have kept" in (out / "selection_signal.md").read_text(encoding="utf-8")
    rewarded_run = _write_run(tmp_path / "rewarded", STEPS, {"keep": "rewarded"})
    with pytest.raises(ValueError, match="recomputes a best-of-n selection"):
        selection_signal.summarise(rewarded_run, keep_by=["log_likelihood"])


def test_cli_writes_the_table_and_json(tmp_path):
    run = _write_run(tmp_path / "run", STEPS, {"keep": "best"})
    out = tmp_path / "out"
    assert selection_signal.main(["--run-dir", str(run), "--out", str(out), "--bootstrap-resamples", "100"]) == 0
    assert "kept: own advantage" in (out / "selection_signal.md").read_text(encoding="utf-8")
    assert json.loads((out / "selection_signal.json").read_text(encoding="utf-8"))["keep"] == "best"


def test_runs_it_cannot_read_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not a ReST-EM run"):
        selection_signal.summarise(_write_run(tmp_path / "grpo", STEPS, {"agent": "grpo"}))
    without_likelihood = [dict(step, info={**step["info"], "metrics": {"accuracy": 1.0}}) for step in STEPS]
    with pytest.raises(ValueError, match="only knowledge-incorporation runs"):
        selection_signal.summarise(_write_run(tmp_path / "arc", without_likelihood, {"keep": "best"}))
    with pytest.raises(ValueError, match="no config.json"):
        selection_signal.summarise(tmp_path)


def test_repetition_of_the_kept_samples_against_their_siblings(tmp_path):
    # Context 0 keeps (best score) a sample whose 7 trigrams repeat 4 earlier ones; its sibling repeats none.
    steps = [dict(_step(0, 0, score=2.0, reward=1.0, own=0.0, control=0.0, lines=2), self_edit="a b c a b c a b c"),
             dict(_step(0, 1, score=1.0, reward=1.0, own=0.0, control=0.0, lines=2), self_edit="a b c d"),
             dict(_step(1, 0, score=1.0, reward=1.0, own=0.0, control=0.0, lines=2), self_edit="e f g"),
             dict(_step(1, 1, score=0.0, reward=0.0, own=0.0, control=0.0, lines=2), self_edit="e f g e f g")]
    (entry,) = selection_signal.summarise(_write_run(tmp_path / "run", steps, {"keep": "best"}), n_resamples=200)["rounds"]
    # Context 1's sibling repeats 1 of its 4 trigrams; its kept sample none.
    assert entry["repetition"]["mean"] == pytest.approx((4 / 7 / 2 + 1 / 4 / 2) / 2)
    assert entry["kept_repetition_advantage"]["mean"] == pytest.approx(((4 / 7 - 2 / 7) + (0 - 1 / 8)) / 2)
