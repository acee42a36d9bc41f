"""Crash-safe JSON-lines logs (seal_env.jsonl), as the training job and the benchmarks use them."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest

from agents.runner import RunLog
from seal_env.jsonl import append_jsonl, read_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common  # noqa: E402

RECORDS = [{"kind": "proposals", "round": 0, "phase": "eval", "self_edits": [["Ünïcode — “quotes” 🌉"]]},
           {"kind": "round", "round": 0, "metrics": {"round": 0, "note": "naïve café 🌉"}}]


def write_cut(path: Path, records: list[dict], cut: int) -> bytes:
    """The log of ``records`` with its last line cut after ``cut`` bytes (newline included)."""
    lines = [(json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8") for r in records]
    data = b"".join(lines[:-1]) + lines[-1][:cut]
    path.write_bytes(data)
    return lines[-1]


def test_a_cut_at_any_byte_of_the_last_line_keeps_the_finished_lines_and_repairs_the_file(tmp_path):
    path = tmp_path / "log.jsonl"
    last = (json.dumps(RECORDS[-1], ensure_ascii=False) + "\n").encode("utf-8")
    assert len(last) > len(json.dumps(RECORDS[-1], ensure_ascii=False))  # multi-byte characters to cut inside
    for cut in range(len(last) + 1):
        write_cut(path, RECORDS, cut)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            records = read_jsonl(path, repair=True)
        whole = cut >= len(last) - 1  # only the newline missing: the record is complete
        assert records == (RECORDS if whole else RECORDS[:-1]), cut
        append_jsonl(path, {"kind": "next"})
        assert read_jsonl(path, repair=True) == records + [{"kind": "next"}], cut


def test_a_reader_without_repair_never_writes(tmp_path):
    path = tmp_path / "log.jsonl"
    write_cut(path, RECORDS, 10)
    before = path.read_bytes()
    assert read_jsonl(path, repair=False) == RECORDS[:1]
    assert path.read_bytes() == before


def test_a_malformed_finished_line_is_an_error_naming_it(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n{"a": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(path, repair=True)


def test_a_short_write_is_completed(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))  # 3 bytes per call
    path = tmp_path / "log.jsonl"
    for record in RECORDS:
        append_jsonl(path, record)
    monkeypatch.undo()
    assert read_jsonl(path, repair=False) == RECORDS


def test_run_log_resumes_after_a_cut_inside_a_multibyte_character(tmp_path):
    last = write_cut(tmp_path / "steps.jsonl", RECORDS, 0)
    cut = last.index("🌉".encode()) + 2
    write_cut(tmp_path / "steps.jsonl", RECORDS, cut)
    log = RunLog(tmp_path)
    with pytest.warns(UserWarning, match="unfinished"):
        log.read()
    assert log.proposals and not log.rounds
    log.append("round", {"round": 0, "metrics": {"round": 0}})
    again = RunLog(tmp_path)
    again.read()
    assert again.rounds == [{"round": 0}]


def test_run_log_keeps_a_last_line_that_lost_only_its_newline(tmp_path):
    last = write_cut(tmp_path / "steps.jsonl", RECORDS, 0)
    write_cut(tmp_path / "steps.jsonl", RECORDS, len(last) - 1)
    log = RunLog(tmp_path)
    log.read()
    assert log.rounds == [RECORDS[1]["metrics"]]
    log.append("proposals", {"round": 1, "phase": "eval", "self_edits": []})
    for _ in range(2):  # every later resume reads the log too
        again = RunLog(tmp_path)
        again.read()
        assert (1, "eval") in again.proposals and len(again.rounds) == 1


def test_result_log_keeps_a_last_record_that_lost_only_its_newline(tmp_path):
    path = tmp_path / "log.jsonl"
    log = _common.ResultLog(path, {"seed": 0}, ("row",))
    log.append({"row": "a"})
    log.append({"row": "b"})
    path.write_bytes(path.read_bytes()[:-1])
    reopened = _common.ResultLog(path, {"seed": 0}, ("row",))
    assert ("a",) in reopened and ("b",) in reopened
    reopened.append({"row": "c"})
    assert len(_common.ResultLog(path, {"seed": 0}, ("row",))) == 3


def test_shards_starting_a_new_log_together_write_one_header(tmp_path, monkeypatch):
    """The race of two shards launched at once: the other shard creates the log between this one's
    check and its link, so this one must leave the log as the other wrote it."""
    path = tmp_path / "log.jsonl"
    real_link = os.link

    def link_after_another_shard(source, target):
        monkeypatch.setattr(os, "link", real_link)  # the other shard starts the log unhindered
        _common.ResultLog(path, {"seed": 0}, ("row",)).append({"row": "other shard"})
        real_link(source, target)

    monkeypatch.setattr(os, "link", link_after_another_shard)
    log = _common.ResultLog(path, {"seed": 0}, ("row",))
    log.append({"row": "this shard"})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"config": {"seed": 0}}, {"row": "other shard"}, {"row": "this shard"}]
    assert not [p.name for p in tmp_path.iterdir() if p.name != "log.jsonl"]  # no temporary file left


def test_a_repeated_header_is_skipped_and_a_different_one_refused(tmp_path):
    path = tmp_path / "log.jsonl"
    header = json.dumps({"config": {"seed": 0}}) + "\n"
    path.write_text(header + header + json.dumps({"row": "a"}) + "\n")
    log = _common.ResultLog(path, {"seed": 0}, ("row",))
    assert [record["row"] for record in log] == ["a"]
    path.write_text(header + json.dumps({"config": {"seed": 1}}) + "\n" + json.dumps({"row": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"other settings \(seed differ\)"):
        _common.ResultLog(path, {"seed": 0}, ("row",))
