"""The sampling-settings probe (benchmarks/sampling_settings.py) on the tiny model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sampling_settings as ss  # noqa: E402
from _common import selection_differential, word_coverage, word_overlap  # noqa: E402

PASSAGES = [
    {"title": "Velmora Bridge", "context": "The Velmora Bridge was designed by Talia Norwin. It is painted ochre.",
     "questions": [{"question": "Who designed the Velmora Bridge?", "answer": "Talia Norwin"}]},
    {"title": "Quell Lake", "context": "Quell Lake lies in the Tarn Valley. It freezes every March.",
     "questions": [{"question": "Where is Quell Lake?", "answer": "the Tarn Valley"}]},
]


def test_settings_parse_with_clear_errors():
    assert ss.parse_setting("rewrite@0.7") == ("rewrite", 0.7)
    for bad, message in [("rewrite", "FORMAT@TEMPERATURE"), ("poems@1.0", "FORMAT@TEMPERATURE"),
                         ("rewrite@warm", "not a number"), ("rewrite@0", "above 0")]:
        with pytest.raises(ValueError, match=message):
            ss.parse_setting(bad)


def test_word_overlap_is_the_share_of_words_found_in_the_passage():
    assert word_overlap("Talia Norwin, ochre!", "The bridge is ochre; Talia Norwin built it.") == 1.0
    assert word_overlap("Talia invented radio", "Talia Norwin") == pytest.approx(1 / 3)
    assert word_overlap("", "anything") == 0.0


def test_word_coverage_is_the_share_of_the_passages_words_carried():
    assert word_coverage("Talia Norwin built it; Talia!", "Talia Norwin built the bridge") == pytest.approx(3 / 5)
    assert word_coverage("anything", "") == 0.0
    assert word_coverage("", "Talia") == 0.0


def test_selection_differential_counts_the_kept_sample_among_all():
    # The kept 4 against the mean of 1, 2, 3 and 4 (itself included): 4 - 2.5.
    assert selection_differential([1.0, 2.0, 3.0, 4.0], [3]) == pytest.approx(1.5)
    # Two tied for best are each kept with equal chance.
    assert selection_differential([1.0, 3.0, 3.0, 1.0], [1, 2]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one"):
        selection_differential([1.0], [])


def test_probe_steps_every_setting_resumes_and_summarises(tmp_path, tiny_lm, monkeypatch):
    torch.set_num_threads(1)
    data = tmp_path / "passages.json"
    data.write_text(json.dumps(PASSAGES), encoding="utf-8")
    config = ss.SamplingSettingsConfig(data=data, settings=("implications@1.0", "self-qa@0.5"), limit=2, samples=2,
                                       sample_tokens=6, out=tmp_path / "out")
    summary = ss.SamplingSettings(config, model=tiny_lm).run()
    steps = [json.loads(line) for line in (tmp_path / "out" / "steps.jsonl").read_text().splitlines()[1:]]
    assert len(steps) == 2 * 1 + 2 * 2 * 2  # the restatement once per passage, then 2 settings x 2 passages x 2
    assert set(summary["settings"]) == {"restatement", "implications@1.0", "self-qa@0.5"}
    restated = summary["settings"]["restatement"]
    assert restated["overlap"]["mean"] == 1.0 and restated["within_sd"]["mean"] == 0.0
    for name in ("implications@1.0", "self-qa@0.5"):
        stats = summary["settings"][name]
        gains = [s["gain"] or 0.0 for s in steps if s["setting"] == name]
        assert stats["n_self_edits"] == 4 and stats["gain"]["mean"] == pytest.approx(sum(gains) / 4)
        assert stats["best_of_k_gain"]["mean"] >= stats["gain"]["mean"]
    assert (tmp_path / "out" / "sampling_settings.md").read_text().startswith("| setting")
    # A unit cut off after its first sample (the last line lost) is stepped again and completed.
    log = tmp_path / "out" / "steps.jsonl"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:-1]))
    completed = ss.SamplingSettings(config, model=tiny_lm).run()
    assert completed["settings"]["self-qa@0.5"]["n_self_edits"] == 4
    assert completed["settings"] == summary["settings"]  # seeded: the same samples and steps
    # Resumed: nothing is sampled or stepped again.
    monkeypatch.setattr(ss, "sample_self_edits", lambda *a, **k: pytest.fail("sampled again"))
    again = ss.SamplingSettings(config, model=tiny_lm).run()
    assert again["settings"] == summary["settings"]


def test_summary_of_hand_made_records():
    def record(passage, sample, gain, overlap, coverage, error=None):
        return {"setting": "s", "passage": passage, "sample": sample, "gain": gain, "reward": float((gain or 0) > 0),
                "overlap": overlap, "coverage": coverage, "error": error,
                "metric_gains": {} if error else {"log_likelihood": gain, "f1": -gain}}

    records = [record(0, 0, 1.0, 0.9, 0.2), record(0, 1, -1.0, 0.2, 0.8), record(0, 2, 0.0, 0.25, 0.5),
               record(1, 0, None, 0.3, 0.1, "no lines"), record(1, 1, 0.5, 0.5, 0.9)]
    stats = ss.summarise(records, "s")
    assert stats["errors"] == 1 and stats["n_passages"] == 2 and stats["n_self_edits"] == 5
    assert stats["gain"]["mean"] == pytest.approx((0.0 + 0.25) / 2)  # the failed step counts as gain 0
    assert stats["best_of_k_gain"]["mean"] == pytest.approx((1.0 + 0.5) / 2)
    assert stats["overlap_gain_r"] == pytest.approx(1.0)
    assert stats["coverage"]["mean"] == pytest.approx((0.5 + 0.5) / 2)
    # Within each passage coverage falls as the gain rises in passage 0 and rises with it in passage 1
    # (the deviations -0.3/+0.3/0 against +1/-1/0, and -0.4/+0.4 against -0.25/+0.25).
    deviations = [(-0.3, 1.0), (0.3, -1.0), (0.0, 0.0), (-0.4, -0.25), (0.4, 0.25)]
    x, y = zip(*deviations)
    expected = sum(a * b for a, b in deviations) / (sum(a * a for a in x) * sum(b * b for b in y)) ** 0.5
    assert stats["coverage_gain_r"] == pytest.approx(expected)
    # The failed step has no metric gains: passage 1 has one usable sample, and only passage 0 counts.
    assert stats["coverage_metric_r"]["log_likelihood"] == pytest.approx(-1.0)
    assert stats["coverage_metric_r"]["f1"] == pytest.approx(1.0)
    # Selecting passage 0's best by the log-likelihood keeps sample 0 (coverage 0.2, where the
    # passage's three samples average 0.5), by F1 sample 1 (0.8); no containment was measured.
    by_ll, by_f1 = stats["selection_by_metric"]["log_likelihood"], stats["selection_by_metric"]["f1"]
    assert by_ll["extra_coverage"]["mean"] == pytest.approx(0.2 - 0.5) and by_ll["extra_contains"] is None
    assert by_f1["extra_coverage"]["mean"] == pytest.approx(0.8 - 0.5)
    tied = [{**r, "metric_gains": {"contains": 0.5 if r["sample"] < 2 else 0.0}} for r in records if r["passage"] == 0]
    # Samples 0 and 1 tie for best: each is kept with equal chance (their mean coverage is 0.5, as
    # the passage's; their containment gain 0.5 against a mean of 1/3).
    by_contains = ss.summarise(tied, "s")["selection_by_metric"]["contains"]
    assert by_contains["extra_coverage"]["mean"] == pytest.approx(0.0)
    assert by_contains["extra_contains"]["mean"] == pytest.approx(0.5 - 1 / 3)
    assert "kept: extra coverage" in ss.markdown({"s": stats})
    assert ss.summarise(records, "other") == {"n_passages": 0}
    # A log written before steps recorded their coverage is summarised without it.
    older = [{k: v for k, v in r.items() if k != "coverage"} for r in records]
    assert "coverage" not in ss.summarise(older, "s") and ss.summarise(older, "s")["gain"] == stats["gain"]


def test_env_kwargs_reach_the_environment_and_the_log_refuses_other_ones(tmp_path, tiny_lm):
    torch.set_num_threads(1)
    data = tmp_path / "passages.json"
    data.write_text(json.dumps(PASSAGES), encoding="utf-8")
    plus = '{"include_passage": true, "baseline": "passage", "reward_metric": "log_likelihood"}'
    config = ss.SamplingSettingsConfig(data=data, settings=("rewrite@0.5",), limit=2, samples=1, sample_tokens=6,
                                       out=tmp_path / "out", env_kwargs=plus)
    probe = ss.SamplingSettings(config, model=tiny_lm)
    env = probe.envs["rewrite"]
    assert env.include_passage and env.baseline_mode == "passage" and env.reward_metric == "log_likelihood"
    probe.run()
    with pytest.raises(ValueError, match="env_kwargs"):  # a log of another reward is not resumed
        ss.SamplingSettings(ss.SamplingSettingsConfig(**{**vars(config), "env_kwargs": "{}"}), model=tiny_lm)
    with pytest.raises(ValueError, match="env_kwargs: .*unexpected keyword argument 'reward_metrc'"):
        ss.SamplingSettings(ss.SamplingSettingsConfig(**{**vars(config), "env_kwargs": '{"reward_metrc": "f1"}'}),
                            model=tiny_lm)
    # A reward computed from the greedy answers makes the probe generate them (and report containment).
    contains = ss.SamplingSettings(ss.SamplingSettingsConfig(**{**vars(config), "out": tmp_path / "contains",
                                                               "env_kwargs": '{"reward_metric": "contains"}'}), model=tiny_lm)
    assert contains.envs["rewrite"].answer_generation and not probe.envs["rewrite"].answer_generation
    contains.run()
    restated = [json.loads(line) for line in (tmp_path / "contains" / "steps.jsonl").read_text().splitlines()[1:]
                if json.loads(line)["setting"] == "restatement"]
    # One question per passage: a containment gain is -1, 0 or +1, never a log-likelihood's fraction.
    assert len(restated) == 2 and all(r["error"] is None and r["gain"] in (-1.0, 0.0, 1.0) for r in restated)
    # Every measured metric's gain is logged, the reward's own among them.
    assert all(r["metric_gains"]["contains"] == r["gain"] and {"f1", "log_likelihood"} <= set(r["metric_gains"])
               for r in restated)
    for bad, message in [("[1]", "JSON object"), ("{", "not valid JSON"), ('{"self_edit_format": "rewrite"}', "cannot set")]:
        with pytest.raises(ValueError, match=message):
            ss.parse_env_kwargs(bad)


def test_command_line_reports_bad_input_in_one_line(tmp_path, capsys):
    assert ss.main(["--data", str(tmp_path / "missing.json"), "--out", str(tmp_path)]) == 2
    assert ss.main(["--data", str(tmp_path / "missing.json"), "--settings", "rewrite@hot"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all(line.startswith("sampling_settings: error: ") for line in errors)
    assert "not a number" in errors[1]
