"""The reward-validity benchmark (benchmarks/reward_validity.py) on the tiny model."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from seal_env.tasks.knowledge import sentences

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reward_validity as rv  # noqa: E402

PASSAGES = [
    {"title": "Velmora Bridge", "context": "The Velmora Bridge was designed by Talia Norwin. It is painted ochre.",
     "questions": [{"question": "Who designed the Velmora Bridge?", "answer": "Talia Norwin"},
                   {"question": "What colour is the Velmora Bridge?", "answer": "ochre"}],
     "self_edits": {"seal-iter2-qwen2.5-7b": ["Talia Norwin designed the bridge.\nThe bridge is ochre."],
                    "gpt-4.1": ["The Velmora Bridge's designer was Talia Norwin."]}},
    {"title": "Quell Lake", "context": "Quell Lake lies in the Tarn Valley. It freezes every March.",
     "questions": [{"question": "Where is Quell Lake?", "answer": "the Tarn Valley"}],
     "self_edits": {"seal-iter2-qwen2.5-7b": ["Quell Lake is in the Tarn Valley."], "gpt-4.1": ["It freezes in March."]}},
    {"title": "Orrin Lamp", "context": "The Orrin lamp burns whale oil! It was made in 1820.",
     "questions": [{"question": "What does the Orrin lamp burn?", "answer": "whale oil"}],
     "self_edits": {"seal-iter2-qwen2.5-7b": ["The Orrin lamp burns whale oil."], "gpt-4.1": ["Made in 1820."]}},
]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "passages.json"
    path.write_text(json.dumps(PASSAGES), encoding="utf-8")
    return path


def test_restatement_and_shuffled_junk_keep_the_passage_size():
    passage = rv.load_passages(None)[0]
    restated = rv.restatement(passage.context)
    assert restated.splitlines() == sentences(passage.context) and len(restated.splitlines()) >= 2
    junk = rv.shuffled_words(passage, seed=0)
    assert sorted(junk.split()) == sorted(passage.context.split()) and junk != restated.replace("\n", " ")
    assert len(junk.splitlines()) == len(restated.splitlines())


def test_benchmark_steps_every_kind_resumes_and_reports_every_statistic(data_file, tmp_path, tiny_lm, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setitem(rv.CANDIDATES, "tiny", {"inner_loop": rv.InnerLoopConfig(rank=2, epochs=1, learning_rate=1e-2),
                                                "max_answer_tokens": 3, "reward_metric": "log_likelihood"})
    config = rv.ValidityConfig(data=data_file, out=tmp_path / "out", candidate="tiny", limit=3, retest_limit=2,
                               samples=2, sample_tokens=8)
    summary = rv.RewardValidity(config, model=tiny_lm).run()
    records = (tmp_path / "out" / "tiny.log.jsonl").read_text().splitlines()
    kinds = {"restatement", "seal-iter2-qwen2.5-7b", "gpt-4.1", "untrained-0", "untrained-1", "junk-other", "junk-shuffled"}
    assert summary["n_steps"] == len(records) - 1 == 7 * (3 + 2)  # 3 passages x seed 0, 2 x seed 1
    logged = [json.loads(line) for line in records[1:]]
    assert {r["kind"] for r in logged} == kinds
    for name in rv.STATISTICS:
        entry = summary[name]
        assert entry is not None, name
        assert math.isfinite(entry["mean"]) or name in ("retest_r", "dense_text_agreement", "length_partial_r")
    assert 0.0 <= summary["junk_loses_fraction"]["mean"] <= 1.0
    assert set(summary["targets_met"]) == set(rv.TARGETS)
    table = (tmp_path / "out" / "tiny.md").read_text().splitlines()
    assert table[0].startswith("| candidate") and len(table) == 4  # header, rule, as stepped, damage-controlled
    derived = summary["damage_controlled"]
    assert derived["candidate"] == "tiny, damage-controlled (same steps)" and derived["n_steps"] == summary["n_steps"]
    assert set(derived["targets_met"]) == set(rv.TARGETS)
    # Resumed: nothing is stepped again.
    monkeypatch.setattr(rv.RewardValidity, "step", lambda *a, **k: pytest.fail("stepped again"))
    again = rv.RewardValidity(config, model=tiny_lm).run()
    assert again["restatement_positive_fraction"] == summary["restatement_positive_fraction"]
    # A shorter screen over the same log summarises only its own steps.
    shorter = rv.RewardValidity(replace(config, limit=2, retest_limit=1), model=tiny_lm).run()
    assert shorter["n_passages"] == 2 and shorter["n_steps"] == 7 * (2 + 1)


@pytest.mark.parametrize("candidate", sorted(rv.CANDIDATES))
def test_every_candidate_builds_its_environment_and_logs_its_settings(tmp_path, tiny_lm, candidate):
    data_file = tmp_path / "four_passages.json"  # controlled-3 needs a context and 3 controls
    data_file.write_text(json.dumps(PASSAGES + [{**PASSAGES[0], "title": "Another bridge"}]), encoding="utf-8")
    benchmark = rv.RewardValidity(rv.ValidityConfig(data=data_file, out=tmp_path / "out", candidate=candidate, limit=4),
                                  model=tiny_lm)
    header = json.loads((tmp_path / "out" / f"{candidate}.log.jsonl").read_text().splitlines()[0])["config"]
    settings = rv.CANDIDATES[candidate]
    assert header["env"]["reward_metric"] == benchmark.env.reward_metric == settings.get("reward_metric", rv.CONTROLLED)
    assert header["env"].get("split_sentences", False) == benchmark.env.split_sentences == settings.get("split_sentences", False)
    inner_loop = settings.get("inner_loop", rv.InnerLoopConfig())
    assert header["inner_loop"] == benchmark.env.inner_loop.to_dict() == inner_loop.to_dict()


def test_statistics_on_hand_made_records():
    provenance = {"candidate": "x", "inner_loop": {"seed": 0}}

    def record(p, kind, gain, seed=0, lines=2, tokens=20):
        return {"passage": p, "kind": kind, "seed": seed, "reward": float(gain > 0), "error": None, "gain": gain,
                "contains_gain": gain, "f1_gain": gain, "control_change": -0.1, "n_lines": lines,
                "n_train_tokens": tokens, "train_seconds": 1.0, "eval_seconds": 1.0}

    records = []
    for p in range(4):
        records += [record(p, "restatement", 1.0 + p), record(p, "junk-other", -1.0), record(p, "junk-shuffled", 2.0 + p),
                    record(p, rv.SEAL_SET, 0.5), record(p, "untrained-0", 0.1 * p), record(p, "untrained-1", 0.9)]
        records += [record(p, "restatement", 1.1 + p, seed=1), record(p, "junk-other", -0.9, seed=1)]
    summary = rv.summarise(records, 4, provenance)
    assert summary["restatement_positive_fraction"]["mean"] == 1.0
    assert summary["junk_loses_fraction"]["mean"] == 0.5  # the shuffled junk beats every restatement
    assert {k: v["mean"] for k, v in summary["junk_loses_fraction_by_kind"].items()} == {"junk-other": 1.0,
                                                                                      "junk-shuffled": 0.0}
    assert summary["by_kind"]["restatement"]["mean_contains_gain"] == pytest.approx(2.5)  # 1, 2, 3, 4
    assert summary["seal_beats_untrained_fraction"]["mean"] == 0.5  # beats 0.1 * p, never 0.9
    assert summary["retest_r"]["mean"] == pytest.approx(1.0)
    assert summary["dense_text_agreement"]["mean"] == pytest.approx(1.0)
    assert summary["control_damage"]["mean"] == pytest.approx(-0.1)
    assert summary["targets_met"]["junk_loses_fraction"] is False
    assert summary["targets_met"]["restatement_positive_fraction"] is True
    derived = rv.damage_controlled(records)
    assert [d["gain"] for d in derived] == pytest.approx([r["gain"] + 0.1 for r in records])  # control_change -0.1
    assert [d["reward"] for d in derived] == [float(r["gain"] + 0.1 > 0) for r in records]
    assert derived[0] is not records[0] and records[0]["gain"] == 1.0  # the logged records are left as they were
    assert rv.damage_controlled([{**records[0], "control_change": None}])[0]["gain"] is None


def test_command_line_is_the_config_dataclass(tmp_path):
    config = rv.parse_args(["--data", "p.json", "--limit", "3", "--candidate", "topic-title", "--out", str(tmp_path)])
    assert config == rv.ValidityConfig(data=Path("p.json"), out=tmp_path, limit=3, candidate="topic-title")
    with pytest.raises(SystemExit):
        rv.parse_args(["--limit", "3"])  # --data is required
    assert rv.main(["--data", "p.json", "--candidate", "nonsense"]) == 2
