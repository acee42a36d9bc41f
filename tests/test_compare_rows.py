"""Pairing rows of two knowledge-benchmark runs (benchmarks/compare_rows.py) on hand-written logs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare_rows  # noqa: E402
from _common import file_digest  # noqa: E402
from _knowledge_report import LOG_NAME  # noqa: E402

SETTINGS = {"data_sha256": "abc", "model": "tiny", "inner_loop": {"rank": 4}, "max_answer_tokens": 8, "mode": "single"}


def _record(row: str, passage: int, contains: float, questions: int = 2) -> dict:
    metrics = {"exact_match": 0.0, "f1": contains / 2, "contains": contains, "log_likelihood": -3.0 + contains}
    return {"row": row, "passage": passage, "n_questions": questions, "metrics": metrics}


def _write_run(folder: Path, records: list[dict], **settings) -> Path:
    folder.mkdir()
    lines = [json.dumps({"config": {**SETTINGS, "temperature": 1.0, **settings}})] + [json.dumps(r) for r in records]
    (folder / LOG_NAME).write_text("\n".join(lines) + '\n{"row": "cut sh', encoding="utf-8")
    return folder


def test_pairs_rows_across_runs_by_passage_weighted_by_questions(tmp_path, capsys):
    reference = _write_run(tmp_path / "a", [_record("untrained", p, 0.0) for p in range(3)], temperature=0.5)
    # Passage 3 has no reference and is left out; passage 2 has 4 questions and weighs twice.
    other = _write_run(
        tmp_path / "b",
        [_record("gpt", 0, 0.5), _record("gpt", 1, 0.0), _record("gpt", 2, 1.0, questions=4), _record("gpt", 3, 1.0)],
    )
    out = tmp_path / "out"
    code = compare_rows.main(["--reference", f"{reference}:untrained", "--rows", f"{other}:gpt", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "compare_rows.json").read_text())
    (row,) = summary["rows"]
    assert row["n_passages"] == 3
    # (2 * 0.5 + 2 * 0.0 + 4 * 1.0) / 8 questions
    assert row["difference"]["contains"]["mean"] == pytest.approx(0.625)
    assert row["difference"]["log_likelihood"]["mean"] == pytest.approx(0.625)
    assert row["difference"]["contains"]["low"] <= 0.625 <= row["difference"]["contains"]["high"]
    table = (out / "compare_rows.md").read_text()
    assert "| gpt (" in table and "62.5 [" in table
    assert table in capsys.readouterr().out


def test_refuses_runs_that_measured_differently(tmp_path, capsys):
    reference = _write_run(tmp_path / "a", [_record("untrained", 0, 0.0)])
    other = _write_run(tmp_path / "b", [_record("gpt", 0, 1.0)], inner_loop={"rank": 16})
    assert compare_rows.main(["--reference", f"{reference}:untrained", "--rows", f"{other}:gpt"]) == 2
    assert "inner_loop differ" in capsys.readouterr().err


@pytest.mark.parametrize(
    "rows, message",
    [
        ("{b}:missing", "no passage in common"),
        ("{a}/nowhere:gpt", "no knowledge-benchmark log"),
    ],
)
def test_bad_rows_get_one_clear_error(tmp_path, capsys, rows, message):
    reference = _write_run(tmp_path / "a", [_record("untrained", 0, 0.0)])
    other = _write_run(tmp_path / "b", [_record("gpt", 0, 1.0)])
    code = compare_rows.main(["--reference", f"{reference}:untrained", "--rows", rows.format(a=reference, b=other)])
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_row_without_its_run_folder_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare_rows.main(["--reference", f"{tmp_path}:untrained", "--rows", "gpt"])
    assert exit_info.value.code == 2
    assert "expected RUN_FOLDER:ROW, got 'gpt'" in capsys.readouterr().err


def test_a_repeated_header_is_read_as_the_benchmark_reads_it(tmp_path, capsys):
    """Shards of an earlier version could each write the header: an identical copy is skipped, a
    different one refused, as the benchmark's own log does."""
    reference = _write_run(tmp_path / "a", [_record("untrained", 0, 0.0)])
    other = _write_run(tmp_path / "b", [_record("gpt", 0, 1.0)])
    log = other / LOG_NAME
    header = log.read_text(encoding="utf-8").splitlines()[0]
    log.write_text(header + "\n" + log.read_text(encoding="utf-8"), encoding="utf-8")
    args = ["--reference", f"{reference}:untrained", "--rows", f"{other}:gpt"]
    assert compare_rows.main(args) == 0
    assert "| gpt (" in capsys.readouterr().out
    log.write_text(header + "\n" + log.read_text(encoding="utf-8").replace('"temperature": 1.0', '"temperature": 0.7', 1),
                   encoding="utf-8")
    assert compare_rows.main(args) == 2
    assert "temperature differ" in capsys.readouterr().err


def test_files_with_the_same_passages_pair_when_both_are_given(tmp_path, capsys):
    """A file derived from another (derive_self_edits.py) adds self-edit sets only: with both files
    given, runs of the two pair; a file whose passages differ still does not."""
    passages = [{"title": "T", "context": "Talia designed it.", "questions": [{"question": "Who?", "answer": "Talia"}]}]
    original, derived, changed = tmp_path / "original.json", tmp_path / "derived.json", tmp_path / "changed.json"
    original.write_text(json.dumps(passages), encoding="utf-8")
    derived.write_text(json.dumps([{**passages[0], "self_edits": {"gen": ["Talia did."]}}]), encoding="utf-8")
    changed.write_text(json.dumps([{**passages[0], "context": "Someone designed it."}]), encoding="utf-8")
    reference = _write_run(tmp_path / "a", [_record("untrained", 0, 0.0)], data_sha256=file_digest(original))
    other = _write_run(tmp_path / "b", [_record("gen", 0, 1.0)], data_sha256=file_digest(derived))
    args = ["--reference", f"{reference}:untrained", "--rows", f"{other}:gen"]
    assert compare_rows.main(args) == 2
    assert "data_sha256 differ" in capsys.readouterr().err
    assert compare_rows.main([*args, "--data", f"{original},{derived}", "--out", str(tmp_path / "out")]) == 0
    assert "| gen (" in capsys.readouterr().out
    # the reference's settings are reported as logged
    summary = json.loads((tmp_path / "out" / "compare_rows.json").read_text())
    assert summary["settings"]["data_sha256"] == file_digest(original)
    third = _write_run(tmp_path / "c", [_record("gen", 0, 1.0)], data_sha256=file_digest(changed))
    assert compare_rows.main(["--reference", f"{reference}:untrained", "--rows", f"{third}:gen",
                              "--data", f"{original},{changed}"]) == 2
    assert "data_sha256 differ" in capsys.readouterr().err


def test_runs_pair_by_the_passage_of_the_data_file(tmp_path, capsys):
    """A run started with --first-passage 1 logs the file's passage 1 as its passage 0: it pairs with
    the other run's passage 1, not its passage 0."""
    reference = _write_run(tmp_path / "a", [_record("untrained", 0, 0.0), _record("untrained", 1, 0.5)])
    later = _write_run(tmp_path / "b", [_record("gpt", 0, 1.0)], first_passage=1)
    out = tmp_path / "out"
    assert compare_rows.main(["--reference", f"{reference}:untrained", "--rows", f"{later}:gpt", "--out", str(out)]) == 0
    (row,) = json.loads((out / "compare_rows.json").read_text())["rows"]
    assert row["n_passages"] == 1
    assert row["difference"]["contains"]["mean"] == pytest.approx(0.5)
