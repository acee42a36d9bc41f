"""The self-edit traits report (benchmarks/self_edit_traits.py) on hand-written benchmark logs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import self_edit_traits  # noqa: E402
from _common import file_digest, trigram_repetition  # noqa: E402
from _knowledge_report import LOG_NAME  # noqa: E402

PASSAGES = [
    {"title": "Velmora Bridge", "context": "Talia Norwin designed the bridge.",
     "questions": [{"question": "Who designed the Velmora Bridge?", "answer": "Talia Norwin"}]},
    {"title": "Quell Lake", "context": "Quell Lake freezes in March.",
     "questions": [{"question": "When does Quell Lake freeze?", "answer": "March"}]},
]


def _step(text: str, contains: float, log_likelihood: float, error: str | None = None) -> dict:
    metrics = {} if error else {"contains": contains, "log_likelihood": log_likelihood}
    return {"text": text, "error": error, "metrics": metrics}


def _write_run(folder: Path, data: Path, records: list[dict], sample_tokens: int = 8) -> Path:
    folder.mkdir()
    header = {"config": {"data_sha256": file_digest(data), "model": "tiny", "mode": "single", "sample_tokens": sample_tokens}}
    (folder / LOG_NAME).write_text("\n".join(json.dumps(r) for r in [header, *records]) + "\n", encoding="utf-8")
    return folder


def _r(deviations: list[tuple[float, float]]) -> float:
    """Pearson r of pairs that are already centred."""
    xy = sum(a * b for a, b in deviations)
    return xy / (sum(a * a for a, _ in deviations) * sum(b * b for _, b in deviations)) ** 0.5


def test_traits_and_within_passage_correlations_match_a_hand_computation(tmp_path, capsys, tokenizer):
    data = tmp_path / "passages.json"
    data.write_text(json.dumps(PASSAGES), encoding="utf-8")
    records = [
        # Passage 0 (5 distinct words): the self-edit carrying more of them has the answer.
        {"row": "untrained", "passage": 0, "n_questions": 1, "self_edits": [
            _step("Talia Norwin designed the bridge.", 1.0, -2.0),
            _step("A bridge\n\nwas built.", 0.0, -1.0),
            _step("unusable", 0.0, 0.0, error="no lines")]},
        # Passage 1 (5 distinct words): the same direction for containment.
        {"row": "untrained", "passage": 1, "n_questions": 1, "self_edits": [
            _step("Quell Lake freezes.\nIn March.", 1.0, -3.0),
            _step("Ice.", 0.0, -4.0)]},
        {"row": "restatement", "passage": 0, "n_questions": 1, "self_edits": [_step("Talia Norwin designed the bridge.", 1.0, -1.0)]},
    ]
    lengths = {text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
               for text in ("Talia Norwin designed the bridge.", "A bridge\n\nwas built.", "Quell Lake freezes.\nIn March.", "Ice.")}
    limit = max(lengths.values())  # the longest self-edit reached the sampling limit, the shortest did not
    run = _write_run(tmp_path / "run", data, records, sample_tokens=limit)
    out = tmp_path / "out"
    assert self_edit_traits.main(["--data", str(data), "--runs", str(run), "--out", str(out)], tokenizer) == 0
    summary = json.loads((out / "self_edit_traits.json").read_text())
    untrained, restated = summary["rows"]
    assert (untrained["row"], untrained["n_passages"], untrained["n_self_edits"]) == ("untrained", 2, 4)
    # Coverage: passage 0 (5/5 + 1/5) / 2, passage 1 (5/5 + 0) / 2; lines: (1 + 2) / 2 and (2 + 1) / 2.
    assert untrained["coverage"]["mean"] == pytest.approx((0.6 + 0.5) / 2)
    assert untrained["lines"]["mean"] == pytest.approx(1.5)
    assert untrained["contains"]["mean"] == pytest.approx(0.5)
    assert untrained["tokens"]["mean"] == pytest.approx(sum(lengths.values()) / 4)
    reached = {text: float(n >= limit - self_edit_traits.LIMIT_SLACK) for text, n in lengths.items()}
    assert reached["Ice."] == 0.0
    assert untrained["at_limit"]["mean"] == pytest.approx(
        ((reached["Talia Norwin designed the bridge."] + reached["A bridge\n\nwas built."]) / 2
         + (reached["Quell Lake freezes.\nIn March."] + reached["Ice."]) / 2) / 2)
    # Within passage (each passage's means subtracted): coverage deviates by +-0.4 and +-0.5; containment
    # rises with it in both passages, the log-likelihood falls with it in passage 0 and rises in passage 1.
    assert untrained["coverage_contains_r"] == pytest.approx(_r([(0.4, 0.5), (-0.4, -0.5), (0.5, 0.5), (-0.5, -0.5)]))
    assert untrained["coverage_log_likelihood_r"] == pytest.approx(_r([(0.4, -0.5), (-0.4, 0.5), (0.5, 0.5), (-0.5, -0.5)]))
    # No self-edit of the untrained row repeats a word trigram of its own. Within each passage the
    # self-edits' token counts deviate from their mean by half their difference (the tokenizer's counts).
    assert untrained["repetition"]["mean"] == 0.0
    token_deviations = [lengths["Talia Norwin designed the bridge."] - lengths["A bridge\n\nwas built."],
                        lengths["Quell Lake freezes.\nIn March."] - lengths["Ice."]]
    assert untrained["tokens_contains_r"] == pytest.approx(_r([(token_deviations[0] / 2, 0.5), (-token_deviations[0] / 2, -0.5),
                                                               (token_deviations[1] / 2, 0.5), (-token_deviations[1] / 2, -0.5)]))
    assert restated["coverage"]["mean"] == 1.0 and restated["coverage_contains_r"] is None  # one self-edit per passage
    table = (out / "self_edit_traits.md").read_text()
    assert "| untrained (" in table and "| restatement (" in table and table in capsys.readouterr().out


def test_a_run_that_started_at_a_later_passage_is_read_against_those_passages(tmp_path, tokenizer):
    data = tmp_path / "passages.json"
    data.write_text(json.dumps(PASSAGES), encoding="utf-8")
    # --first-passage 1: the log's passage 0 is the file's passage 1, all of whose words this carries
    record = {"row": "untrained", "passage": 0, "n_questions": 1, "self_edits": [_step("Quell Lake freezes in March.", 1.0, -1.0)]}
    run = _write_run(tmp_path / "run", data, [record])
    log = run / LOG_NAME
    log.write_text(log.read_text(encoding="utf-8").replace('"mode": "single"', '"mode": "single", "first_passage": 1'),
                   encoding="utf-8")
    config = self_edit_traits.TraitsConfig(data=data, runs=[run], bootstrap_resamples=50)
    assert self_edit_traits.report(config, tokenizer)["rows"][0]["coverage"]["mean"] == 1.0


def test_trigram_repetition_counts_the_trigrams_seen_before():
    assert trigram_repetition("The lake freezes. The lake freezes.") == pytest.approx(1 / 4)  # 4 trigrams, the last repeats the first
    assert trigram_repetition("a b c a b c a b c") == pytest.approx(4 / 7)
    assert trigram_repetition("the lake freezes in March") == 0.0
    assert trigram_repetition("too short") == 0.0


def test_bad_input_gets_one_clear_error(tmp_path, capsys, tokenizer):
    data = tmp_path / "passages.json"
    data.write_text(json.dumps(PASSAGES), encoding="utf-8")
    other = tmp_path / "other.json"
    other.write_text(json.dumps(PASSAGES[:1] * 2), encoding="utf-8")
    run = _write_run(tmp_path / "run", other, [])
    assert self_edit_traits.main(["--data", str(data), "--runs", str(run)], tokenizer) == 2
    assert self_edit_traits.main(["--data", str(data), "--runs", str(tmp_path / "nowhere")], tokenizer) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and "data_sha256 differs" in errors[0] and "no knowledge-benchmark log" in errors[1]
