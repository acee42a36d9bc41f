"""The recitation report (benchmarks/answer_recitation.py) on hand-written benchmark logs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import answer_recitation  # noqa: E402
from _common import file_digest  # noqa: E402
from _knowledge_report import LOG_NAME  # noqa: E402

PASSAGES = [
    {"title": "Velmora Bridge", "context": "Talia Norwin designed the old stone bridge over the Vel river in 1820.",
     "questions": [{"question": "Who designed the Velmora Bridge?", "answer": "Talia Norwin"},
                   {"question": "When was it built?", "answer": "1820"}]},
    {"title": "Quell Lake", "context": "Quell Lake freezes every year in March after the long northern winter.",
     "questions": [{"question": "When does Quell Lake freeze?", "answer": "March"}]},
]


def _item(prediction: str, contains: float, log_likelihood: float) -> dict:
    return {"question": "q", "prediction": prediction, "contains": contains, "log_likelihood": log_likelihood}


def _write_run(folder: Path, data: Path, records: list[dict], **settings) -> Path:
    folder.mkdir()
    config = {"data_sha256": file_digest(data), "model": "tiny", "mode": "single", "inner_loop": {"rank": 4},
              "max_answer_tokens": 8, **settings}
    (folder / LOG_NAME).write_text("\n".join(json.dumps(r) for r in [{"config": config}, *records]) + "\n", encoding="utf-8")
    return folder


def test_recites_needs_the_given_number_of_consecutive_passage_words():
    passage = PASSAGES[0]["context"]
    assert answer_recitation.recites("It was the old stone bridge over the river.", passage, 6)  # "the old stone bridge over the"
    assert not answer_recitation.recites("the old stone bridge over a river", passage, 6)  # only five in a row
    assert answer_recitation.recites("THE OLD STONE, BRIDGE over", passage, 5)  # case and punctuation do not matter
    assert not answer_recitation.recites("Talia", passage, 6)  # shorter than the run


def test_shares_and_paired_differences_match_a_hand_computation(tmp_path, capsys):
    data = tmp_path / "passages.json"
    data.write_text(json.dumps(PASSAGES), encoding="utf-8")
    reciting_0 = "Talia Norwin designed the old stone bridge"
    reciting_1 = "Quell Lake freezes every year in March"
    records = [
        # untrained: passage 0 has one reciting answer of two, passage 1 none
        {"row": "untrained", "passage": 0, "n_questions": 2, "self_edits": [
            {"error": None, "items": [_item(reciting_0, 1.0, -2.0), _item("In the past.", 0.0, -4.0)]},
            {"error": "no lines", "items": []}]},  # unusable: left out
        {"row": "untrained", "passage": 1, "n_questions": 1, "self_edits": [
            {"error": None, "items": [_item("Winter.", 0.0, -3.0)]}]},
        # generator: every answer recites; one of passage 0's misses the gold answer
        {"row": "generator", "passage": 0, "n_questions": 2, "self_edits": [
            {"error": None, "items": [_item(reciting_0, 1.0, -1.0), _item(reciting_0, 0.0, -5.0)]}]},
        {"row": "generator", "passage": 1, "n_questions": 1, "self_edits": [
            {"error": None, "items": [_item(reciting_1, 1.0, -2.0)]}]},
    ]
    run = _write_run(tmp_path / "run", data, records)
    out = tmp_path / "out"
    code = answer_recitation.main(["--data", str(data), "--rows", f"{run}:untrained,{run}:generator",
                                   "--reference", f"{run}:untrained", "--out", str(out), "--bootstrap-resamples", "200"])
    assert code == 0
    summary = json.loads((out / "answer_recitation.json").read_text())
    untrained, generator = summary["rows"]
    # Pooled within passages, passages weighed by their answers: (1/2 * 2 + 0 * 1) / 3.
    assert untrained["recites"]["mean"] == pytest.approx(1 / 3)
    assert untrained["n_answers"] == 3
    assert untrained["contains"]["mean"] == pytest.approx(1 / 3)
    assert untrained["contains_reciting"]["mean"] == pytest.approx(1.0)
    assert untrained["contains_other"]["mean"] == pytest.approx(0.0)
    assert untrained["log_likelihood_reciting"]["mean"] == pytest.approx(-2.0)
    assert untrained["log_likelihood_other"]["mean"] == pytest.approx(-3.5)
    assert generator["recites"]["mean"] == pytest.approx(1.0)
    assert generator["contains_reciting"]["mean"] == pytest.approx(2 / 3)
    assert generator["contains_other"] is None  # no answer that does not recite
    # Paired per passage: recites +1/2 (passage 0, 2 answers) and +1 (passage 1, 1 answer).
    assert generator["delta_recites"]["mean"] == pytest.approx((0.5 * 2 + 1.0) / 3)
    assert generator["delta_contains"]["mean"] == pytest.approx((0.0 * 2 + 1.0) / 3)
    assert untrained["delta_recites"]["mean"] == pytest.approx(0.0)
    assert summary["rows_recites_contains_r"] is None  # two rows: nothing to correlate
    table = (out / "answer_recitation.md").read_text()
    assert "contains | reciting %" in table and "—" in table
    assert "contains | reciting %" in capsys.readouterr().out


def test_bad_input_is_one_clear_error(tmp_path, capsys):
    data = tmp_path / "passages.json"
    data.write_text(json.dumps(PASSAGES), encoding="utf-8")
    record = {"row": "untrained", "passage": 0, "n_questions": 2,
              "self_edits": [{"error": None, "items": [_item("x", 0.0, -1.0)]}]}
    run = _write_run(tmp_path / "run", data, [record])
    other = _write_run(tmp_path / "other", data, [record], max_answer_tokens=16)
    with pytest.raises(SystemExit) as exit_info:
        answer_recitation.main(["--data", str(data), "--rows", str(run)])
    assert exit_info.value.code == 2
    assert "expected RUN_FOLDER:ROW" in capsys.readouterr().err
    cases = [
        (["--rows", f"{run}:generator"], "has no logged answers"),
        (["--rows", f"{run}:untrained", "--min-words", "1"], "--min-words must be at least 2"),
        (["--rows", f"{other}:untrained", "--reference", f"{run}:untrained"], "measured differently (max_answer_tokens"),
    ]
    for args, message in cases:
        assert answer_recitation.main(["--data", str(data), *args]) == 2
        assert message in capsys.readouterr().err
    data.write_text(json.dumps(PASSAGES[:1]), encoding="utf-8")  # another file than the run evaluated
    assert answer_recitation.main(["--data", str(data), "--rows", f"{run}:untrained"]) == 2
    assert "evaluated other data" in capsys.readouterr().err


def test_a_run_that_started_at_a_later_passage_is_read_against_those_passages(tmp_path):
    data = tmp_path / "passages.json"
    data.write_text(json.dumps(PASSAGES), encoding="utf-8")
    # --first-passage 1: the log's passage 0 is the file's passage 1, whose words this answer recites
    record = {"row": "untrained", "passage": 0, "n_questions": 1, "self_edits": [
        {"error": None, "items": [_item("Quell Lake freezes every year in March", 1.0, -1.0)]}]}
    run = _write_run(tmp_path / "run", data, [record], first_passage=1)
    summary = answer_recitation.report(answer_recitation.RecitationConfig(data=data, rows=[(run, "untrained")],
                                                                          bootstrap_resamples=50))
    assert summary["rows"][0]["recites"]["mean"] == pytest.approx(1.0)
