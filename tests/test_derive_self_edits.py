"""Deriving self-edit sets from a benchmark's logged samples (benchmarks/derive_self_edits.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import derive_self_edits  # noqa: E402

from seal_env.tasks.knowledge import load_passages, self_edit_lines  # noqa: E402

PASSAGES = [
    {"title": "Velmora Bridge", "context": "Talia Norwin designed the bridge.",
     "questions": [{"question": "Who designed the Velmora Bridge?", "answer": "Talia Norwin"}],
     "self_edits": {"gpt-4.1": ["Talia Norwin designed it."]}},
    {"title": "Quell Lake", "context": "Quell Lake freezes in March.",
     "questions": [{"question": "When does Quell Lake freeze?", "answer": "March"}]},
]


def test_deduplication_drops_repeated_and_restarted_sentences_only():
    text = ("Talia Norwin designed the bridge. It opened in 1820.\n\nRewritten:\n"
            "Talia norwin designed the BRIDGE! It closed in 1900.\nTalia Norwin designed")
    assert derive_self_edits.deduplicate_sentences(text) == (
        "Talia Norwin designed the bridge. It opened in 1820.\nRewritten:\nIt closed in 1900.")
    assert derive_self_edits.deduplicate_sentences("No repeats here. None at all.") == "No repeats here. None at all."


def _write_cache(folder: Path, entries: list[dict]) -> Path:
    folder.mkdir()
    lines = [json.dumps({"config": {"seed": 0}})] + [json.dumps(e) for e in entries]
    (folder / "self_edits.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_writes_the_logged_sets_and_their_edits_for_the_environment(tmp_path, capsys):
    data = tmp_path / "passages.json"
    data.write_text(json.dumps(PASSAGES), encoding="utf-8")
    repeated = "Quell Lake freezes in March.\vQuell Lake freezes in March. It thaws in May."
    run = _write_cache(tmp_path / "run", [
        {"source": "generator", "passage": 1, "texts": [repeated, "Ice in March."]},
        {"source": "untrained", "passage": 0, "texts": ["Not taken."]},
    ])
    out = tmp_path / "derived" / "passages.json"
    code = derive_self_edits.main(["--data", str(data), "--sources", f"{run}:generator:gen", "--out", str(out)])
    assert code == 0
    passages = load_passages(out)  # the environment's loader accepts it (the vertical tab became a newline)
    assert passages[0].self_edits == {"gpt-4.1": ["Talia Norwin designed it."]}  # not sampled: untouched
    sets = passages[1].self_edits
    assert sets["gen"] == ["Quell Lake freezes in March.\nQuell Lake freezes in March. It thaws in May.", "Ice in March."]
    # The same lines for the environment as the logged text had.
    assert self_edit_lines(sets["gen"][0]) == self_edit_lines(repeated)
    assert sets["gen-deduplicated"] == ["Quell Lake freezes in March.\nIt thaws in May.", "Ice in March."]
    assert sets["gen-sentence-lines"][0] == "Quell Lake freezes in March.\nQuell Lake freezes in March.\nIt thaws in May."
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    (source,) = summary["sources"]
    assert source["sets"]["gen-deduplicated"]["changed"] == 1
    assert source["sets"]["gen-sentence-lines"]["lines"] == pytest.approx((3 + 1) / 2)
    assert source["sets"]["gen"]["trigram_repetition"] > source["sets"]["gen-deduplicated"]["trigram_repetition"]
    assert "gen-deduplicated" in capsys.readouterr().out


def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, capsys):
    data = tmp_path / "passages.json"
    data.write_text(json.dumps(PASSAGES), encoding="utf-8")
    run = _write_cache(tmp_path / "run", [{"source": "generator", "passage": 5, "texts": ["Too far."]}])
    ok = _write_cache(tmp_path / "ok", [{"source": "generator", "passage": 0, "texts": ["Fine."]}])
    out = tmp_path / "out.json"
    cases = [
        ([f"{run}:untrained:u"], "no self-edits of row 'untrained'"),
        ([f"{run}:generator:g"], "sampled for passage 5"),
        ([f"{tmp_path}:generator:g"], "no sampled self-edits"),
        ([f"{run}:generator:g,{run}:generator:g"], "source names repeat"),
        ([f"{ok}:generator:untrained"], "may not be named 'untrained'"),
    ]
    for sources, message in cases:
        assert derive_self_edits.main(["--data", str(data), "--sources", *sources, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
    out.write_text("keep me", encoding="utf-8")
    assert derive_self_edits.main(["--data", str(data), "--sources", f"{run}:generator:g", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "keep me"


def test_a_run_that_started_at_a_later_passage_gets_its_sets_on_those_passages(tmp_path):
    data = tmp_path / "passages.json"
    data.write_text(json.dumps(PASSAGES), encoding="utf-8")
    run = tmp_path / "run"
    run.mkdir()
    # knowledge_incorporation.py --first-passage 1 logs passage 1 of the file as its passage 0
    lines = [{"config": {"first_passage": 1}}, {"source": "generator", "passage": 0, "texts": ["Ice. Ice."]}]
    (run / "self_edits.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n", encoding="utf-8")
    out = tmp_path / "out.json"
    assert derive_self_edits.main(["--data", str(data), "--sources", f"{run}:generator:gen", "--out", str(out)]) == 0
    passages = load_passages(out)
    assert "gen" not in passages[0].self_edits
    assert passages[1].self_edits["gen-deduplicated"] == ["Ice."]
