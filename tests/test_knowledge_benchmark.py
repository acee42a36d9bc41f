"""The knowledge-incorporation benchmark (benchmarks/knowledge_incorporation.py), its helpers
(benchmarks/_common.py) and the continual-learning library (seal_env.continual), on a tiny model."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from peft import get_peft_model

from conftest import weights_digest
from seal_env.continual import ContinualLearner, forgetting_matrix, run_continual
from seal_env.inner_loop import InnerLoopConfig, adapted
from seal_env.lm import TrainingExample
from seal_env.tasks.knowledge import KnowledgeIncorporationEnv, load_passages, sentences

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common  # noqa: E402
import knowledge_incorporation as bench  # noqa: E402

PASSAGES = [
    {
        "title": "Velmora Bridge",
        "context": "The Velmora Bridge spans the Quillan Strait. It was designed by Talia Norwin and opened in 1931.",
        "questions": [
            {"question": "Who designed the Velmora Bridge?", "answer": "Talia Norwin"},
            {"question": "When did the Velmora Bridge open?", "answer": "1931"},
        ],
        "self_edits": {
            "set-a": ["1. Talia Norwin designed the Velmora Bridge.\n2. The bridge opened in 1931.", "The bridge is old."],
            "set-b": ["The Velmora Bridge crosses the Quillan Strait."],
        },
    },
    {
        "title": "Lake Orsovane",
        "context": "Lake Orsovane lies in Keldmar. Its water is violet because of the mineral orsovite.",
        "questions": [{"question": "Why is Lake Orsovane violet?", "answer": "orsovite"}],
        "self_edits": {
            "set-a": ["- Orsovite makes Lake Orsovane violet.", "Lake Orsovane is in Keldmar."],
            "set-b": ["Keldmar has a violet lake."],
        },
    },
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: the tiny model's operations are too small to gain from more, and on a
    shared busy CPU extra threads only wait for each other (measured ~10x slower at load 9)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "passages.json"
    path.write_text(json.dumps(PASSAGES), encoding="utf-8")
    return path


def make_config(data_file: Path, out: Path, **overrides) -> bench.BenchmarkConfig:
    """Small settings: short sampled self-edits and few bootstrap resamples keep the tests fast."""
    settings = dict(data=data_file, out=out, sample_tokens=12, max_answer_tokens=6, bootstrap_resamples=200)
    return bench.BenchmarkConfig(**(settings | overrides))


def log_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[1:]]


# ------------------------------------------------------------------------------ bootstrap, log


def test_bootstrap_ci_of_constant_values_is_a_point():
    interval = _common.bootstrap_ci([0.25] * 30, n_resamples=500)
    assert interval == _common.Interval(0.25, 0.25, 0.25)


def test_bootstrap_ci_of_coin_flips_matches_the_normal_approximation():
    # 200 fair coin flips: mean 0.5, standard error sqrt(0.25 / 200), 95% interval ~ +-1.96 SE.
    interval = _common.bootstrap_ci([0.0, 1.0] * 100, n_resamples=20_000, seed=1)
    half_width = 1.96 * math.sqrt(0.25 / 200)
    assert interval.mean == 0.5
    assert interval.low == pytest.approx(0.5 - half_width, abs=0.01)
    assert interval.high == pytest.approx(0.5 + half_width, abs=0.01)
    assert _common.bootstrap_ci([0.0, 1.0] * 100, n_resamples=20_000, seed=1) == interval


def test_bootstrap_ci_weights_give_the_question_level_mean():
    # Passage accuracies 1.0 (3 questions) and 0.0 (1 question): 3 of 4 questions right.
    interval = _common.bootstrap_ci([1.0, 0.0], [3, 1], n_resamples=2_000)
    assert interval.mean == 0.75
    assert 0.0 <= interval.low <= 0.75 <= interval.high <= 1.0


@pytest.mark.parametrize(
    "values, weights", [([], None), ([1.0, 2.0], [1.0]), ([1.0, 2.0], [1.0, 0.0])], ids=["empty", "mismatch", "zero-weight"]
)
def test_bootstrap_ci_rejects_bad_input(values, weights):
    with pytest.raises(ValueError):
        _common.bootstrap_ci(values, weights)


def test_result_log_resumes_refuses_other_settings_and_drops_a_cut_off_line(tmp_path):
    path = tmp_path / "log.jsonl"
    log = _common.ResultLog(path, {"seed": 0}, ("row", "passage"))
    log.append({"row": "base", "passage": 0, "value": 1.5})
    with path.open("a", encoding="utf-8") as f:
        f.write('{"row": "base", "passage": 1, "val')  # an interrupted write
    with pytest.warns(UserWarning, match="unfinished"):
        reopened = _common.ResultLog(path, {"seed": 0}, ("row", "passage"))
    assert ("base", 0) in reopened and ("base", 1) not in reopened
    reopened.append({"row": "base", "passage": 1, "value": 2.5})
    assert [r["value"] for r in log_records(path)] == [1.5, 2.5]
    with pytest.raises(ValueError, match="seed"):
        _common.ResultLog(path, {"seed": 1}, ("row", "passage"))


# ------------------------------------------------------------------------------ single mode


def test_single_mode_writes_rows_table_and_plot_and_leaves_the_model_unchanged(data_file, tmp_path, tiny_lm):
    model, _ = tiny_lm
    before = weights_digest(model)
    out = tmp_path / "out"
    summary = bench.Benchmark(make_config(data_file, out), model=tiny_lm).run()

    assert [r["key"] for r in summary["rows"]] == ["base", "passage", "restatement", "untrained", "set-a", "set-b"]
    written = json.loads((out / "single.json").read_text())
    assert [r["name"] for r in written["rows"]] == [r["name"] for r in summary["rows"]]
    for row in written["rows"]:
        assert row["n_passages"] == 2 and row["n_questions"] == 3
        for metric in bench.METRICS:
            iv = row["metrics"][metric]
            assert iv["low"] <= iv["mean"] <= iv["high"]
        assert row["seconds_per_passage"]["median"] > 0
    assert "vs_passage" in written["rows"][4] and "vs_passage" not in written["rows"][0]
    table = (out / "single.md").read_text()
    assert "passage + set-a self-edits" in table and "contains answer %" in table
    assert (out / "single.png").stat().st_size > 0
    assert weights_digest(model) == before
    # The untrained model's sampled self-edits are cached for reuse.
    assert {(r["source"], r["passage"]) for r in log_records(out / "self_edits.jsonl")} == {("untrained", 0), ("untrained", 1)}


def test_single_mode_averages_k_self_edits_per_passage(data_file, tmp_path, tiny_lm):
    config = make_config(data_file, tmp_path / "out", rows=["set-a"], self_edits_per_passage=2)
    bench.Benchmark(config, model=tiny_lm).run()
    records = log_records(tmp_path / "out" / "single.log.jsonl")
    assert len(records) == 2
    for record in records:
        assert len(record["self_edits"]) == 2
        expected = sum(e["metrics"]["log_likelihood"] for e in record["self_edits"]) / 2
        assert record["metrics"]["log_likelihood"] == pytest.approx(expected)


def test_restatement_row_trains_on_the_passage_one_sentence_per_line_once(data_file, tmp_path, tiny_lm):
    config = make_config(data_file, tmp_path / "out", rows=["restatement"], self_edits_per_passage=2)
    bench.Benchmark(config, model=tiny_lm).run()
    records = log_records(tmp_path / "out" / "single.log.jsonl")
    passages = load_passages(data_file)
    assert [r["passage"] for r in records] == [0, 1]
    for record in records:
        (self_edit,) = record["self_edits"]  # deterministic: K copies would repeat one score
        assert self_edit["text"] == _common.restatement(passages[record["passage"]].context)
        assert self_edit["n_train_examples"] == len(sentences(passages[record["passage"]].context)) + 1


@pytest.mark.parametrize("key", ["restatement", "generator"])
def test_a_self_edit_set_named_like_a_built_in_row_is_refused(key):
    named = dataclasses.replace(load_passages(None)[0], self_edits={key: ["a line"]})
    with pytest.raises(ValueError, match=f"may not be named '{key}'"):
        bench.available_rows([named], with_generator=False, model_label="tiny")


def test_interrupted_run_resumes_to_the_same_result_without_redoing_rows(data_file, tmp_path, tiny_lm, monkeypatch):
    rows = ["base", "passage", "untrained", "set-a"]
    model, tokenizer = tiny_lm
    reference = bench.Benchmark(make_config(data_file, tmp_path / "full", rows=rows), model=tiny_lm).run()

    out = tmp_path / "resumed"
    real_append = _common.ResultLog.append
    appended = []

    def interrupted_append(self, record):
        if self.path.name == "single.log.jsonl":
            if len(appended) == 3:
                raise KeyboardInterrupt  # Ctrl-C after three finished rows
            appended.append(record)
        real_append(self, record)

    monkeypatch.setattr(_common.ResultLog, "append", interrupted_append)
    with pytest.raises(KeyboardInterrupt):
        bench.Benchmark(make_config(data_file, out, rows=rows), model=(copy.deepcopy(model), tokenizer)).run()
    monkeypatch.setattr(_common.ResultLog, "append", real_append)
    assert len(log_records(out / "single.log.jsonl")) == 3

    calls = []
    monkeypatch.setattr(bench.Benchmark, "_single_base", lambda self, i, f=bench.Benchmark._single_base: calls.append(("base", i)) or f(self, i))
    resumed = bench.Benchmark(make_config(data_file, out, rows=rows), model=(copy.deepcopy(model), tokenizer)).run()

    records = log_records(out / "single.log.jsonl")
    assert len(records) == 8 and len({(r["row"], r["passage"]) for r in records}) == 8  # nothing done twice
    assert calls == [("base", 1)]  # passage 0's base row was done before the interruption
    for got, want in zip(resumed["rows"], reference["rows"]):
        assert got["name"] == want["name"]
        for metric in bench.METRICS:
            assert got["metrics"][metric]["mean"] == pytest.approx(want["metrics"][metric]["mean"], abs=1e-5)


def test_shards_share_one_folder_and_the_last_one_writes_the_whole_result(data_file, tmp_path, tiny_lm):
    rows = ["base", "passage", "set-a"]
    model, tokenizer = tiny_lm
    reference = bench.Benchmark(make_config(data_file, tmp_path / "full", rows=rows), model=tiny_lm).run()

    out = tmp_path / "sharded"
    first = bench.Benchmark(make_config(data_file, out, rows=rows, shard=(1, 2)), model=(copy.deepcopy(model), tokenizer))
    assert first.run()["complete"] is False  # passage 0 (shard 0/2) is still missing
    assert {r["passage"] for r in log_records(out / "single.log.jsonl")} == {1}
    assert not (out / "single.json").exists()
    last = bench.Benchmark(make_config(data_file, out, rows=rows, shard=(0, 2)), model=(copy.deepcopy(model), tokenizer))
    summary = last.run()

    records = log_records(out / "single.log.jsonl")
    assert len(records) == 6 and len({(r["row"], r["passage"]) for r in records}) == 6
    assert json.loads((out / "single.json").read_text())["rows"] == summary["rows"]
    for got, want in zip(summary["rows"], reference["rows"]):
        for metric in bench.METRICS:
            assert got["metrics"][metric]["mean"] == pytest.approx(want["metrics"][metric]["mean"], abs=1e-5)


def test_result_log_reload_sees_another_writers_records_and_keeps_their_unfinished_line(tmp_path):
    path = tmp_path / "log.jsonl"
    mine = _common.ResultLog(path, {"seed": 0}, ("row", "passage"))
    theirs = _common.ResultLog(path, {"seed": 0}, ("row", "passage"))
    theirs.append({"row": "base", "passage": 1})
    with path.open("a", encoding="utf-8") as f:
        f.write('{"row": "base", "passage": 2')  # another writer's line, still being written
    mine.reload()
    assert ("base", 1) in mine and ("base", 2) not in mine
    assert path.read_text(encoding="utf-8").endswith('"passage": 2')  # not truncated by a reader


def test_a_changed_setting_refuses_to_resume_into_the_same_folder(data_file, tmp_path, tiny_lm):
    bench.Benchmark(make_config(data_file, tmp_path / "out", rows=["base"]), model=tiny_lm).run()
    with pytest.raises(ValueError, match="max_answer_tokens"):
        bench.Benchmark(make_config(data_file, tmp_path / "out", rows=["base"], max_answer_tokens=7), model=tiny_lm)


def test_generator_row_samples_from_a_saved_peft_adapter(data_file, tmp_path, tiny_lm):
    model, tokenizer = tiny_lm
    before = weights_digest(model)
    generator = get_peft_model(copy.deepcopy(model), InnerLoopConfig(rank=2).lora_config())
    generator.save_pretrained(tmp_path / "generator")
    config = make_config(data_file, tmp_path / "out", rows=["generator"], generator=tmp_path / "generator")
    summary = bench.Benchmark(config, model=tiny_lm).run()
    assert [r["key"] for r in summary["rows"]] == ["generator"]
    assert {r["source"] for r in log_records(tmp_path / "out" / "self_edits.jsonl")} == {"generator"}
    assert weights_digest(model) == before
    assert "vs_untrained" not in summary["rows"][0]  # no untrained row to compare with


def test_generator_row_is_compared_with_the_untrained_row_on_the_same_passages(data_file, tmp_path, tiny_lm):
    model, _ = tiny_lm
    generator = get_peft_model(copy.deepcopy(model), InnerLoopConfig(rank=2).lora_config())
    generator.save_pretrained(tmp_path / "generator")
    config = make_config(data_file, tmp_path / "out", rows=["untrained", "generator"], generator=tmp_path / "generator")
    summary = bench.Benchmark(config, model=tiny_lm).run()
    rows = {r["key"]: r for r in summary["rows"]}
    records = {key: {r["passage"]: r for r in log_records(tmp_path / "out" / "single.log.jsonl") if r.get("row") == key}
               for key in rows}
    differences = [records["generator"][p]["metrics"]["log_likelihood"] - records["untrained"][p]["metrics"]["log_likelihood"]
                   for p in sorted(records["generator"])]
    weights = [records["generator"][p]["n_questions"] for p in sorted(records["generator"])]
    expected = sum(d * w for d, w in zip(differences, weights)) / sum(weights)
    assert rows["generator"]["vs_untrained"]["log_likelihood"]["mean"] == pytest.approx(expected)
    assert "vs_untrained" not in rows["untrained"]
    assert "from the untrained model's" in (tmp_path / "out" / "single.md").read_text(encoding="utf-8")


def test_rows_reused_from_an_earlier_generators_run_equal_a_fresh_computation(data_file, tmp_path, tiny_lm):
    model, _ = tiny_lm
    for name, seed in (("first", 1), ("second", 2)):
        torch.manual_seed(seed)
        generator = get_peft_model(copy.deepcopy(model), InnerLoopConfig(rank=2, seed=seed).lora_config())
        for parameter in generator.parameters():
            if parameter.requires_grad:  # a LoRA B starts at zero: make the two generators differ
                torch.nn.init.normal_(parameter, std=0.5)
        generator.save_pretrained(tmp_path / name)
    rows = ["untrained", "generator"]
    bench.Benchmark(make_config(data_file, tmp_path / "earlier", rows=rows, generator=tmp_path / "first"), model=tiny_lm).run()
    fresh = bench.Benchmark(make_config(data_file, tmp_path / "fresh", rows=rows, generator=tmp_path / "second"), model=tiny_lm).run()
    reusing = make_config(data_file, tmp_path / "reusing", rows=rows, generator=tmp_path / "second",
                          reuse_rows_from=tmp_path / "earlier")
    reused = bench.Benchmark(reusing, model=tiny_lm).run()

    def units(folder: str) -> dict:
        return {(r["row"], r["passage"]): r for r in log_records(tmp_path / folder / "single.log.jsonl")}

    earlier, computed, copied = units("earlier"), units("fresh"), units("reusing")
    assert all(copied[("untrained", p)] == {**earlier[("untrained", p)], "reused_from": str(tmp_path / "earlier")} for p in (0, 1))
    assert all(copied[("untrained", p)]["metrics"] == computed[("untrained", p)]["metrics"] for p in (0, 1))
    assert all("reused_from" not in copied[("generator", p)] for p in (0, 1))
    assert copied[("generator", 0)]["self_edits"] != earlier[("generator", 0)]["self_edits"]
    assert [r["metrics"] for r in reused["rows"]] == [r["metrics"] for r in fresh["rows"]]
    sources = {(e["source"], e["passage"]) for e in log_records(tmp_path / "reusing" / "self_edits.jsonl")}
    assert sources == {(key, p) for key in rows for p in (0, 1)}
    bench.Benchmark(reusing, model=tiny_lm).run()  # a rerun copies nothing twice
    assert len(log_records(tmp_path / "reusing" / "single.log.jsonl")) == 4
    with pytest.raises(ValueError, match="max_answer_tokens differ"):
        bench.Benchmark(make_config(data_file, tmp_path / "other", rows=rows, generator=tmp_path / "second",
                                    max_answer_tokens=5, reuse_rows_from=tmp_path / "earlier"), model=tiny_lm)
    with pytest.raises(FileNotFoundError, match="no single.log.jsonl"):
        make_config(data_file, tmp_path / "other", reuse_rows_from=tmp_path / "second")


def test_self_edit_format_sets_the_sampling_prompt_and_is_part_of_the_logs_settings(data_file, tmp_path, tiny_lm, monkeypatch):
    prompts = []

    def fake_sampler(model, tokenizer, observation_prompts, **kwargs):
        prompts.extend(observation_prompts)
        return [["A line of a self-edit."] * kwargs.get("n", 1) for _ in observation_prompts]

    monkeypatch.setattr(bench, "sample_self_edits", fake_sampler)
    bench.Benchmark(make_config(data_file, tmp_path / "out", rows=["untrained"], self_edit_format="rewrite"), model=tiny_lm).run()
    assert prompts and all("rewrite it in a few different ways" in p for p in prompts)
    with pytest.raises(ValueError, match="self_edit_format"):  # the folder's logs hold rewrite self-edits
        bench.Benchmark(make_config(data_file, tmp_path / "out", rows=["untrained"]), model=tiny_lm)


def test_split_sentences_trains_each_sampled_sentence_and_is_part_of_the_logs_settings(data_file, tmp_path, tiny_lm, monkeypatch):
    monkeypatch.setattr(bench, "sample_self_edits", lambda model, tokenizer, prompts, **kwargs: [
        ["It is one. It is two. It is three."] * kwargs.get("n", 1) for _ in prompts])
    out = tmp_path / "out"
    bench.Benchmark(make_config(data_file, out, rows=["untrained"], split_sentences=True), model=tiny_lm).run()
    records = log_records(out / "single.log.jsonl")
    assert records and all(e["n_train_examples"] == 3 + 1 for r in records for e in r["self_edits"])  # + the passage
    assert json.loads((out / "single.log.jsonl").read_text(encoding="utf-8").splitlines()[0])["config"]["split_sentences"]
    with pytest.raises(ValueError, match="split_sentences"):  # its log was trained sentence by sentence
        bench.Benchmark(make_config(data_file, out, rows=["untrained"]), model=tiny_lm)


def test_a_step_budget_fixes_every_updates_steps_and_is_part_of_the_logs_settings(data_file, tmp_path, tiny_lm):
    out = tmp_path / "out"
    bench.Benchmark(make_config(data_file, out, rows=["passage"], inner_max_steps=3), model=tiny_lm).run()
    records = log_records(out / "single.log.jsonl")
    assert records and all(r["train"]["steps"] == 3 for r in records)
    assert json.loads((out / "single.log.jsonl").read_text(encoding="utf-8").splitlines()[0])["config"]["inner_loop"]["max_steps"] == 3
    with pytest.raises(ValueError, match="inner_loop"):  # its log was trained with the budget
        bench.Benchmark(make_config(data_file, out, rows=["passage"]), model=tiny_lm)


def test_first_passage_evaluates_later_passages_in_their_own_logs(data_file, tmp_path, tiny_lm):
    out = tmp_path / "out"
    benchmark = bench.Benchmark(make_config(data_file, out, rows=["base"], first_passage=1, limit=1), model=tiny_lm)
    assert [p.title for p in benchmark.passages] == ["Lake Orsovane"]
    summary = benchmark.run()
    assert summary["rows"][0]["n_passages"] == 1
    assert json.loads((out / "single.log.jsonl").read_text(encoding="utf-8").splitlines()[0])["config"]["first_passage"] == 1
    with pytest.raises(ValueError, match="first_passage"):  # its log holds other passages than the first
        bench.Benchmark(make_config(data_file, out, rows=["base"], limit=1), model=tiny_lm)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(self_edit_format="poems"), "self_edit_format must be one of"),
        (dict(mode="cpt", limit=1), "--n-passages"),
        (dict(n_passages=2), "--limit"),
        (dict(rows=["nope"]), "unknown row"),
        (dict(mode="cpt", n_passages=3), "only 2 passages"),
        (dict(shard=(2, 2)), "0 <= I < N"),
        (dict(mode="cpt", shard=(0, 2)), "--shard is for the single mode"),
        (dict(first_passage=2), "has only 2 passages"),
        (dict(mode="cpt", first_passage=1), "--first-passage"),
        (dict(mode="cpt", split_sentences=True), "--split-sentences"),
        (dict(inner_max_steps=0), "inner_max_steps must be >= 1"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(data_file, tmp_path, tiny_lm, overrides, message):
    with pytest.raises(ValueError, match=message):
        bench.Benchmark(make_config(data_file, tmp_path / "out", **overrides), model=tiny_lm)


# ------------------------------------------------------------------------------ cpt mode


def test_cpt_mode_trains_one_adapter_on_all_passages_and_scores_every_passage(data_file, tmp_path, tiny_lm):
    model, _ = tiny_lm
    before = weights_digest(model)
    out = tmp_path / "out"
    config = make_config(data_file, out, mode="cpt", n_passages=2, rows=["base", "passage", "set-a"])
    summary = bench.Benchmark(config, model=tiny_lm).run()
    assert [r["key"] for r in summary["rows"]] == ["base", "passage", "set-a"]
    records = {(r["row"], r["passage"]): r for r in log_records(out / "cpt.log.jsonl")}
    assert len(records) == 6
    # one update per row: both passages carry the same training summary; passage + 1 self-edit each
    assert records[("set-a", 0)]["train"] == records[("set-a", 1)]["train"]
    assert records[("set-a", 0)]["train"]["n_examples"] == 4
    assert records[("passage", 0)]["train"]["n_examples"] == 2
    assert json.loads((out / "cpt.json").read_text())["paper"]["setting"].startswith("continued pretraining")
    assert (out / "cpt.md").exists() and (out / "cpt.png").stat().st_size > 0
    assert weights_digest(model) == before


# ------------------------------------------------------------------------------ continual mode


def test_continual_mode_writes_lower_triangular_matrices_and_heat_maps(data_file, tmp_path, tiny_lm):
    model, _ = tiny_lm
    before = weights_digest(model)
    out = tmp_path / "out"
    config = make_config(data_file, out, mode="continual", n_passages=2, rows=["passage", "set-b"])
    summary = bench.Benchmark(config, model=tiny_lm).run()
    assert [r["name"] for r in summary["rows"]] == ["passage only", "passage + set-b self-edits"]
    for row in summary["rows"]:
        matrix = row["matrix"]["log_likelihood"]
        assert len(matrix) == 3 and all(len(r) == 2 for r in matrix)
        assert None not in matrix[0] and None not in matrix[2]
        assert matrix[1][0] is not None and matrix[1][1] is None  # passage 2 not learnt yet
    for metric in bench.METRICS:
        assert (out / f"continual_{metric}.png").stat().st_size > 0
    assert "forgetting" in (out / "continual.md").read_text()
    assert weights_digest(model) == before


def test_continual_learner_merges_each_update_into_a_private_copy(tiny_lm):
    model, tokenizer = tiny_lm
    before = weights_digest(model)
    env = KnowledgeIncorporationEnv(load_passages(None)[:1], model=tiny_lm, max_answer_tokens=4,
                                    reward_metric="log_likelihood")
    examples = [TrainingExample(env.render_context(env.contexts[0]))]
    with adapted(model, tokenizer, examples, env.inner_loop) as run, torch.no_grad():
        adapted_score = env.evaluate(run.model, env.contexts[0]).metrics["log_likelihood"]

    learner = ContinualLearner(env)
    result = learner.incorporate(examples, 0)
    assert result.error is None and learner.learnt == [0]
    assert weights_digest(model) == before  # the shared model is untouched
    assert weights_digest(learner.model) != before  # the copy carries the merged update
    assert learner.evaluate(0).metrics["log_likelihood"] == pytest.approx(adapted_score, abs=1e-4)


def test_run_continual_replays_done_steps_to_the_same_state(tiny_lm):
    env = KnowledgeIncorporationEnv(load_passages(None)[:2], model=tiny_lm, max_answer_tokens=4)

    def examples_for(_learner, index):
        return [TrainingExample(env.render_context(env.contexts[index]))]

    full = run_continual(env, [0, 1], examples_for, progress=False)
    assert [s.step for s in full] == [0, 1, 2] and [s.learnt for s in full] == [None, 0, 1]
    matrix = forgetting_matrix(full, "log_likelihood")
    assert matrix.shape == (3, 2) and math.isnan(matrix[1, 1]) and not math.isnan(matrix[2, 0])

    resumed = run_continual(env, [0, 1], examples_for, done_steps={0, 1}, progress=False)
    assert [s.step for s in resumed] == [2]
    for got, want in zip(resumed[0].metrics, full[2].metrics):
        assert got == pytest.approx(want)


def test_command_line_maps_onto_the_config_and_reports_bad_input(data_file, tmp_path, capsys):
    config = bench.parse_args(["--data", str(data_file), "--out", str(tmp_path), "--rows", "base, set-a", "--mode", "cpt"])
    assert config.rows == ["base", "set-a"] and config.n_passages == bench.DEFAULT_N_PASSAGES["cpt"]
    assert bench.parse_args(["--data", str(data_file), "--out", str(tmp_path), "--shard", "1/3"]).shard == (1, 3)
    with pytest.raises(SystemExit):
        bench.parse_args(["--data", str(data_file), "--out", str(tmp_path), "--shard", "one"])
    assert bench.main(["--data", str(tmp_path / "missing.json"), "--out", str(tmp_path)]) == 2
    assert "no such passages file" in capsys.readouterr().err

