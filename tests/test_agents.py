"""Agents (ReST-EM, GRPO through TRL), the training job, resume, and the `seal-env train` options."""

from __future__ import annotations

import argparse
import json
import runpy
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

import seal_env  # noqa: F401  (registers the environments)
from agents.base import Round, StepRecord
from agents.cli import add_train_arguments, configs_from_args
from agents.generator import GeneratorConfig
from agents.grpo import EnvReward, GRPOAgent, GRPOAgentConfig
from agents.rest_em import RestEMAgent, RestEMConfig, select_self_edits
from agents.runner import TrainConfig, TrainSetupError, agent_settings, check_run_folder, train
from agents.stepping import SequentialStepper
from conftest import make_tiny_model
from seal_env.inner_loop import InnerLoopConfig

KNOWLEDGE = "seal_env/KnowledgeIncorporation-v0"
TINY_INNER = InnerLoopConfig(rank=4, epochs=1, batch_size=8, max_tokens_per_example=32)
TINY_GENERATION = dict(max_new_tokens=8, lora_rank=4, lora_alpha=8.0)
TIMING_KEYS = ("train_seconds", "eval_seconds")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine OpenMP's spinning threads
    make them several times slower: run this module's tests on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_env(tokenizer, **overrides) -> gym.Env:
    """The knowledge-incorporation env on a tiny inner model (its own, so tests share nothing)."""
    kwargs = dict(model=(make_tiny_model(tokenizer, seed=1), tokenizer), inner_loop=TINY_INNER, max_answer_tokens=2)
    return gym.make(KNOWLEDGE, **{**kwargs, **overrides})


class ScriptedEnv(gym.Env):
    """Known rewards: the score of a self-edit is how often it names its context's word; reward 1.0
    iff the score is positive. Stands in for a SelfAdaptEnv: the training job needs nothing but
    ``num_contexts`` and ``reset(options={"index": ...})`` / ``step()``."""

    contexts = ["apple", "bread", "cider", "dates"]
    num_contexts = len(contexts)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.index = options["index"]
        return {"prompt": f"Write about {self.contexts[self.index]}.", "context": self.contexts[self.index]}, {}

    def step(self, action):
        score = float(action.split().count(self.contexts[self.index]))
        info = {"context_index": self.index, "error": None, "score": score, "baseline_score": 0.0, "gain": score}
        return {}, float(score > 0), True, False, info


SCRIPTED_SELF_EDITS = {  # per context word: the self-edits an agent proposes, in sample order
    "apple": ["pear", "apple", "apple apple"],
    "bread": ["toast", "rolls", "buns"],
    "cider": ["cider", "cider cider cider", "cider"],
    "dates": ["dates", "figs", "dates dates"],
}


def scripted_propose(observations, n, *, seed):
    return [SCRIPTED_SELF_EDITS[obs["context"]][:n] for obs in observations]


class FakeSFTTrainer:
    """Records what SFTTrainer would be trained on (the test is about selection, not optimisation)."""

    datasets: list[list[tuple[str, str]]] = []

    def __init__(self, *, train_dataset, **_):
        FakeSFTTrainer.datasets.append([(row["prompt"][0]["content"], row["completion"][0]["content"]) for row in train_dataset])

    def remove_callback(self, _):
        pass

    add_callback = remove_callback

    def train(self):
        return SimpleNamespace(training_loss=0.5, global_step=1)


def without_timings(record: StepRecord) -> dict:
    return {**record.__dict__, "info": {k: v for k, v in record.info.items() if k not in TIMING_KEYS}}


def read_log(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "steps.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------- ReST-EM


KEPT = {  # what ReST-EM must fine-tune on, per context word, for SCRIPTED_SELF_EDITS
    "rewarded": {"apple": ["apple", "apple apple"], "bread": [], "cider": ["cider", "cider cider cider", "cider"],
                 "dates": ["dates", "dates dates"]},
    "best": {"apple": ["apple apple"], "bread": [], "cider": ["cider cider cider"], "dates": ["dates dates"]},
}


@pytest.mark.parametrize("keep", ["rewarded", "best"])
def test_rest_em_fine_tunes_on_exactly_the_rewarded_self_edits_of_a_scripted_env(keep, tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setattr("agents.rest_em.SFTTrainer", FakeSFTTrainer)
    FakeSFTTrainer.datasets = []
    agent = RestEMAgent(*tiny_lm, RestEMConfig(samples_per_context=3, keep=keep, **TINY_GENERATION))
    monkeypatch.setattr(agent, "propose", scripted_propose)
    env = ScriptedEnv()
    config = TrainConfig(output_dir=str(tmp_path), rounds=1, contexts_per_round=3, eval_contexts=1)
    history = train(agent, env, config, stepper=SequentialStepper(env))

    steps = [e for e in read_log(tmp_path) if e["kind"] == "step" and e["phase"] == "train"]
    words = {env.contexts[e["context_index"]] for e in steps}
    assert len(steps) == 9 and len(words) == 3
    expected = sorted((word, text) for word in words for text in KEPT[keep][word])
    assert sorted((prompt.split()[-1].rstrip("."), completion) for prompt, completion in FakeSFTTrainer.datasets[0]) == expected
    rewarded = sum(len(KEPT["rewarded"][word]) for word in words)
    assert history[1]["agent/kept"] == len(expected) and history[1]["agent/rewarded"] == rewarded
    assert history[1]["train/reward"] == pytest.approx(rewarded / 9)


def test_select_self_edits_breaks_ties_by_the_earliest_sample():
    records = [
        StepRecord(1, "train", 0, sample, "p", text, reward, {"score": score})
        for sample, (text, reward, score) in enumerate([("a", 1.0, 2.0), ("b", 1.0, 2.0), ("c", 0.0, 5.0)])
    ]
    assert [r.self_edit for r in select_self_edits(records, "best")] == ["a"]
    assert select_self_edits(records[2:], "best") == []


def test_keep_by_keeps_the_highest_rank_sum_of_the_named_metrics_among_rewarded_siblings():
    # (reward, score, recall, answers): by score "w" wins; by ranks (among the rewarded) "x", second
    # in both metrics, beats "w" and "y", each first in one and last in the other; "z" is unrewarded.
    samples = {"w": (1.0, 9.0, 4.0, 0.0), "x": (1.0, 1.0, 3.0, 3.0), "y": (1.0, 8.0, 0.0, 4.0), "v": (1.0, 0.0, 1.0, 1.0),
               "z": (0.0, 0.0, 9.0, 9.0)}
    records = [StepRecord(1, "train", 0, sample, "p", text, reward, {"score": score, "metrics": {"recall": recall, "answers": answers}})
               for sample, (text, (reward, score, recall, answers)) in enumerate(samples.items())]
    other_context = StepRecord(1, "train", 1, 0, "q", "u", 1.0, {"score": 0.0, "metrics": {"recall": 0.0, "answers": 0.0}})
    assert [r.self_edit for r in select_self_edits(records, "best")] == ["w"]
    assert [r.self_edit for r in select_self_edits([*records, other_context], "best", ["recall", "answers"])] == ["x", "u"]
    # Equal values share a rank, and a tie in rank sums goes to the higher score.
    tied = [StepRecord(1, "train", 0, k, "p", text, 1.0, {"score": score, "metrics": {"recall": 1.0}})
            for k, (text, score) in enumerate([("a", 1.0), ("b", 2.0)])]
    assert [r.self_edit for r in select_self_edits(tied, "best", ["recall"])] == ["b"]
    with pytest.raises(ValueError, match="keep_by names 'pmi'.*'answers', 'recall'"):
        select_self_edits(records, "best", ["pmi"])
    with pytest.raises(ValueError, match="keep_by needs keep='best'"):
        RestEMConfig(keep="rewarded", keep_by=["recall"])
    with pytest.raises(ValueError, match="keep_by needs keep='best'"):
        RestEMConfig(keep_by=[])


class CrashingStepper(SequentialStepper):
    """Counts the steps it takes; raises after ``crash_after`` of them (a simulated kill)."""

    def __init__(self, env, crash_after=None):
        super().__init__(env)
        self.crash_after = crash_after
        self.steps = 0

    def __call__(self, requests):
        for result in super().__call__(requests):
            if self.steps == self.crash_after:
                raise KeyboardInterrupt("simulated crash")
            self.steps += 1
            yield result


def run_rest_em(tokenizer, directory, *, resume=False, crash_after=None, rounds=1):
    """One ReST-EM round on the tiny env: 6 steps (held-out 1, train 2 contexts x 2, held-out 1).
    A huge negative margin rewards every usable self-edit, so the round certainly fine-tunes."""
    env = tiny_env(tokenizer, reward_margin=-1e9)  # fresh objects each time: a resumed run is a new process
    config = RestEMConfig(samples_per_context=2, keep="rewarded", sft_epochs=1, **TINY_GENERATION)
    agent = RestEMAgent(make_tiny_model(tokenizer), tokenizer, config)
    stepper = CrashingStepper(env, crash_after)
    job = TrainConfig(output_dir=str(directory), rounds=rounds, contexts_per_round=2, eval_contexts=1, resume=resume, seed=1)
    return SimpleNamespace(history=train(agent, env, job, stepper=stepper), stepper=stepper, agent=agent, directory=directory)


@pytest.fixture(scope="module")
def rest_em_run(tokenizer, tmp_path_factory):
    """An uninterrupted ReST-EM run, shared by the tests below (it is the slow part)."""
    return run_rest_em(tokenizer, tmp_path_factory.mktemp("rest-em"))


def test_rest_em_round_on_a_tiny_model_env_writes_every_output(rest_em_run, tokenizer):
    history, directory = rest_em_run.history, rest_em_run.directory
    assert [m["round"] for m in history] == [0, 1]
    assert history[1]["agent/kept"] == 4 and history[1]["agent/steps"] >= 1
    assert [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()] == json.loads(json.dumps(history))
    assert json.loads((directory / "config.json").read_text())["rounds"] == 1
    assert (directory / "progress.png").read_bytes()[:4] == b"\x89PNG"
    assert list((directory / "tensorboard").glob("events.out.tfevents.*"))
    kinds = [e["kind"] for e in read_log(directory)]
    assert kinds.count("step") == 6 and kinds.count("proposals") == 3 and kinds.count("round") == 2
    # The generator is a PEFT adapter that any script loads onto the base model.
    adapter = directory / "generator"
    assert (adapter / "adapter_config.json").is_file()
    weights = load_file(adapter / "adapter_model.safetensors")
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in weights.items()), "SFT changed the adapter"
    loaded = PeftModel.from_pretrained(make_tiny_model(tokenizer), adapter)
    trained = rest_em_run.agent.model.state_dict()
    assert all(torch.equal(tensor, trained[name]) for name, tensor in loaded.state_dict().items() if "lora_" in name)


def test_held_out_rounds_summary_agrees_with_the_run_metrics(rest_em_run, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import held_out_rounds

    log_file = rest_em_run.directory / "steps.jsonl"
    with log_file.open("a", encoding="utf-8") as f:
        f.write('{"kind": "step", "round"')  # a line still being written by a live run
    complete = log_file.read_bytes()
    summary = held_out_rounds.summarise(rest_em_run.directory, n_resamples=200)
    assert log_file.read_bytes() == complete  # the reader leaves the run's log as it found it
    log_file.write_bytes(complete[: complete.rindex(b"\n") + 1])  # other tests share this run
    history = rest_em_run.history
    assert [r["round"] for r in summary["rounds"]] == [0, 1] and summary["n_held_out_contexts"] == 1
    for entry, metrics in zip(summary["rounds"], history):
        assert entry["reward"]["mean"] == pytest.approx(metrics["eval/reward"])
        assert entry["score"]["mean"] == pytest.approx(metrics["eval/score"])
    difference = summary["rounds"][1]["score_vs_round_0"]["mean"]
    assert difference == pytest.approx(history[1]["eval/score"] - history[0]["eval/score"])
    assert held_out_rounds.main(["--run-dir", str(rest_em_run.directory), "--out", str(tmp_path), "--bootstrap-resamples", "200"]) == 0
    assert "Δ score vs round 0" in (tmp_path / "held_out_rounds.md").read_text(encoding="utf-8")


def test_run_killed_mid_round_and_resumed_equals_an_uninterrupted_run(rest_em_run, tokenizer, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_rest_em(tokenizer, tmp_path, crash_after=3)  # in round 1, after 2 of its 4 training steps
    resumed = run_rest_em(tokenizer, tmp_path, resume=True)

    assert resumed.stepper.steps == 3, "only the steps the crash lost are taken again"
    drop_minutes = lambda rows: [{k: v for k, v in m.items() if k != "minutes"} for m in rows]  # noqa: E731
    assert drop_minutes(resumed.history) == drop_minutes(rest_em_run.history)
    records = {}
    for directory in (tmp_path, rest_em_run.directory):
        entries = [e for e in read_log(directory) if e.pop("kind") == "step"]
        records[directory] = sorted((without_timings(StepRecord(**e)) for e in entries), key=lambda r: (r["round"], r["phase"], r["context_index"], r["sample"]))
    assert records[tmp_path] == records[rest_em_run.directory]  # same self-edits, rewards, scores: same kept ones
    straight = load_file(rest_em_run.directory / "generator" / "adapter_model.safetensors")
    again = load_file(tmp_path / "generator" / "adapter_model.safetensors")
    assert straight.keys() == again.keys() and all(torch.equal(straight[k], again[k]) for k in straight)


def test_resume_with_more_rounds_extends_a_finished_run_as_if_it_had_been_that_long(rest_em_run, tokenizer, tmp_path):
    extended, straight = tmp_path / "extended", tmp_path / "straight"
    shutil.copytree(rest_em_run.directory, extended)
    longer = run_rest_em(tokenizer, extended, resume=True, rounds=2)
    assert longer.stepper.steps == 5, "round 1 is not redone: round 2's 4 training steps and its evaluation"
    assert json.loads((extended / "config.json").read_text())["rounds"] == 2
    reference = run_rest_em(tokenizer, straight, rounds=2)
    drop_minutes = lambda rows: [{k: v for k, v in m.items() if k != "minutes"} for m in rows]  # noqa: E731
    assert drop_minutes(longer.history) == drop_minutes(reference.history)
    a, b = (load_file(d / "generator" / "adapter_model.safetensors") for d in (extended, straight))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- GRPO


def test_env_reward_scores_every_completion_against_its_own_context():
    env = ScriptedEnv()
    stepper = SequentialStepper(env)

    class Run:  # steps without a log
        def step(self, round_index, phase, requests, shard):
            return [
                StepRecord(round_index, phase, r.context_index, r.sample, r.prompt, r.self_edit, reward, info)
                for r, (reward, info) in zip(requests, stepper(requests))
            ]

    reward = EnvReward(Round(1, [0, 1], [], seed=0, run=Run()), signal="reward")
    prompts = [[{"role": "user", "content": f"Write about {word}."}] for word in ("bread", "apple", "bread", "apple")]
    completions = [[{"role": "assistant", "content": text}] for text in ("apple", "apple", "bread bread", "bread")]
    assert reward(prompts=prompts, completions=completions, context_index=[1, 0, 1, 0]) == [0.0, 1.0, 1.0, 0.0]
    assert [(r.context_index, r.sample, r.self_edit) for r in reward.records] == [
        (1, 0, "apple"), (0, 1, "apple"), (1, 2, "bread bread"), (0, 3, "bread")
    ]
    gain = EnvReward(reward.round, signal="gain")
    assert gain(prompts=prompts, completions=completions, context_index=[1, 0, 1, 0]) == [0.0, 1.0, 2.0, 0.0]


def test_grpo_round_on_a_tiny_model_env_scores_each_group_on_its_context(tokenizer, tmp_path):
    # The inner model is the generator here: a private copy of the same base model (seed 0 for both).
    env = tiny_env(tokenizer, model=(make_tiny_model(tokenizer), tokenizer))
    config = GRPOAgentConfig(num_generations=2, reward_signal="gain", learning_rate=1e-2, **TINY_GENERATION)
    agent = GRPOAgent(make_tiny_model(tokenizer), tokenizer, config)
    job = TrainConfig(output_dir=str(tmp_path), rounds=1, contexts_per_round=2, eval_contexts=1, inner_model="generator")
    history = train(agent, env, job)

    assert history[1]["agent/steps"] == 2  # one optimiser step per context's group
    steps = [e for e in read_log(tmp_path) if e["kind"] == "step" and e["round"] == 1 and e["phase"] == "train"]
    assert len(steps) == 4 and sorted(e["sample"] for e in steps) == [0, 1, 2, 3]
    for e in steps:  # TRL's prompt and the dataset's context index belong together
        assert e["prompt"] == env.reset(options={"index": e["context_index"]})[0]["prompt"]
        assert e["info"]["context_index"] == e["context_index"]
    assert len({e["context_index"] for e in steps}) == 2
    assert (tmp_path / "generator" / "adapter_model.safetensors").is_file()
    # The held-out evaluation after the round ran on the inner model synced with the trained generator.
    tokens = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        expected = agent.model(input_ids=tokens).logits
        assert not torch.allclose(make_tiny_model(tokenizer)(input_ids=tokens).logits, expected), "GRPO moved the policy"
        assert torch.allclose(env.unwrapped.model(input_ids=tokens).logits, expected, atol=1e-5)


def test_full_finetune_generator_trains_every_weight_and_saves_a_whole_checkpoint(tokenizer, tmp_path):
    config = RestEMConfig(full_finetune=True, learning_rate=1e-3, sft_epochs=1, **TINY_GENERATION)
    agent = RestEMAgent(make_tiny_model(tokenizer), tokenizer, config)
    records = [StepRecord(1, "train", 0, 0, "Write about apple.", "apple apple", 1.0, {"score": 1.0})]
    agent.learn(records, seed=0)
    agent.save(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "tokenizer.json").is_file()
    fresh = make_tiny_model(tokenizer)
    assert not torch.equal(fresh.model.norm.weight, agent.model.model.norm.weight), "not only adapter weights train"
    other = RestEMAgent(fresh, tokenizer, config)
    other.load(tmp_path)
    assert all(torch.equal(p, q) for p, q in zip(other.model.state_dict().values(), agent.model.state_dict().values()))


# ---------------------------------------------------------------------- run folder


def test_a_finished_run_folder_is_not_overwritten_and_resume_needs_the_same_settings(tiny_lm, tmp_path):
    agent = RestEMAgent(*tiny_lm, RestEMConfig(samples_per_context=1, **TINY_GENERATION))
    agent.propose = scripted_propose
    env = ScriptedEnv()
    config = TrainConfig(output_dir=str(tmp_path), rounds=1, contexts_per_round=1, eval_contexts=1)
    agent.learn = lambda records, seed: {"kept": 0.0}
    train(agent, env, config, stepper=SequentialStepper(env))
    with pytest.raises(TrainSetupError, match="--resume"):
        train(agent, env, config, stepper=SequentialStepper(env))
    with pytest.raises(TrainSetupError, match="contexts_per_round"):
        changed = TrainConfig(output_dir=str(tmp_path), rounds=1, contexts_per_round=2, eval_contexts=1, resume=True)
        train(agent, env, changed, stepper=SequentialStepper(env))
    # The agent's own settings are part of the run too: config.json holds them, and resume checks them.
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["agent_config"]["agent"] == "rest-em" and saved["agent_config"]["samples_per_context"] == 1
    resume = TrainConfig(output_dir=str(tmp_path), rounds=1, contexts_per_round=1, eval_contexts=1, resume=True)
    with pytest.raises(TrainSetupError, match=r"agent_config\.learning_rate"):
        check_run_folder(resume, agent_settings("rest-em", RestEMConfig(samples_per_context=1, learning_rate=0.5, **TINY_GENERATION)))
    check_run_folder(resume, agent_settings("rest-em", agent.config))  # the same settings resume


# ---------------------------------------------------------------------- a user's own agent


def test_custom_agent_example_runs_on_the_protocol_and_learns_from_records(tokenizer, tmp_path):
    namespace = runpy.run_path(str(EXAMPLES / "custom_agent.py"))  # defines ReinforceAgent; the job runs only as __main__
    agent = namespace["ReinforceAgent"](make_tiny_model(tokenizer), tokenizer, GeneratorConfig(learning_rate=1e-2, **TINY_GENERATION))
    env = ScriptedEnv()
    history = train(agent, env, TrainConfig(output_dir=str(tmp_path), rounds=1, contexts_per_round=2, eval_contexts=1),
                    stepper=SequentialStepper(env))
    assert history[1]["agent/steps"] == 1 and (tmp_path / "generator" / "adapter_model.safetensors").is_file()

    trainable = lambda: {n: p.detach().clone() for n, p in agent.model.named_parameters() if p.requires_grad}  # noqa: E731
    before = trainable()
    records = [StepRecord(2, "train", 0, k, "Write about apple.", text, reward, {}) for k, (text, reward) in enumerate([("apple", 1.0), ("pear", 0.0)])]
    assert agent.learn(records, seed=0)["baseline"] == 0.5
    after = trainable()
    assert any(not torch.equal(before[name], after[name]) for name in before), "the policy-gradient step moved the adapter"


# ---------------------------------------------------------------------- command line


def test_train_options_come_from_the_config_dataclasses():
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    options = [a for a in parser._actions if a.dest != "help"]
    assert all(a.help and a.default is argparse.SUPPRESS for a in options), "every option documented; defaults live in the configs"

    config, agent_config = configs_from_args(
        parser.parse_args(["--agent", "grpo", "--num-generations", "3", "--inner-epochs", "1", "--rounds", "5", "--no-full-finetune"])
    )
    assert config.rounds == 5 and config.inner_loop.epochs == 1
    assert config.inner_loop.batch_size == TrainConfig().inner_loop.batch_size  # other inner settings keep the job's defaults
    assert isinstance(agent_config, GRPOAgentConfig) and agent_config.num_generations == 3
    assert agent_config.learning_rate == GRPOAgentConfig().learning_rate != RestEMConfig().learning_rate

    config, agent_config = configs_from_args(parser.parse_args([]))
    assert config == TrainConfig() and agent_config == RestEMConfig()
    with pytest.raises(ValueError, match="--samples-per-context is an option of --agent rest-em"):
        configs_from_args(parser.parse_args(["--agent", "grpo", "--samples-per-context", "2"]))
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        configs_from_args(parser.parse_args(["--agent", "grpo", "--num-generations", "1"]))


# ---------------------------------------------------------------------- the real default model


@pytest.mark.slow
def test_grpo_trains_the_default_model_for_a_few_steps_on_cpu(default_lm, tmp_path):
    from seal_env.models import load_model

    model, tokenizer = load_model(None, device="cpu", shared=False)  # the generator's private copy
    env = gym.make(KNOWLEDGE, model=default_lm, inner_loop=TINY_INNER, max_answer_tokens=4)
    agent = GRPOAgent(model, tokenizer, GRPOAgentConfig(num_generations=2, max_new_tokens=16, reward_signal="gain"))
    history = train(agent, env, TrainConfig(output_dir=str(tmp_path), rounds=1, contexts_per_round=1, eval_contexts=1))

    assert history[1]["agent/steps"] == 1
    assert all(m["eval/errors"] < 1 for m in history), "the default model writes usable self-edits"
    weights = load_file(tmp_path / "generator" / "adapter_model.safetensors")
    assert any("lora_B" in name and tensor.abs().sum() > 0 for name, tensor in weights.items()), "GRPO updated the adapter"


def test_where_steps_run_is_checked_and_not_compared_on_resume(tmp_path):
    with pytest.raises(ValueError, match="inner_model 'generator' needs the environment in this process"):
        TrainConfig(ray_address="local", inner_model="generator")
    with pytest.raises(ValueError, match="exclude each other"):
        TrainConfig(ray_address="local", env_url="http://127.0.0.1:8000")
    with pytest.raises(ValueError, match="server's settings"):
        TrainConfig(env_url="http://127.0.0.1:8000", env_kwargs='{"max_answer_tokens": 4}')
    with pytest.raises(ValueError, match="ray_workers must be >= 1"):
        TrainConfig(ray_workers=0)
    with pytest.raises(ValueError, match="ray_gpus_per_worker must be >= 0"):
        TrainConfig(ray_gpus_per_worker=-0.5)
    first = TrainConfig(output_dir=str(tmp_path), rounds=1)
    check_run_folder(first)
    (tmp_path / "config.json").write_text(json.dumps(first.to_dict()))
    # The same run resumed on 4 Ray workers: the steps' results do not depend on where they ran.
    check_run_folder(TrainConfig(output_dir=str(tmp_path), rounds=1, resume=True, ray_address="auto", ray_workers=4))
    with pytest.raises(TrainSetupError, match="seed"):
        check_run_folder(TrainConfig(output_dir=str(tmp_path), rounds=1, resume=True, seed=1))
    check_run_folder(TrainConfig(output_dir=str(tmp_path), rounds=2, resume=True))  # more rounds extend the run
    (tmp_path / "config.json").write_text(json.dumps({**first.to_dict(), "rounds": 2}))
    with pytest.raises(TrainSetupError, match="not shorten"):
        check_run_folder(TrainConfig(output_dir=str(tmp_path), rounds=1, resume=True))


def test_a_run_saved_before_the_step_budget_resumes_and_a_budget_is_a_changed_setting(tmp_path):
    first = TrainConfig(output_dir=str(tmp_path), rounds=1)
    saved = first.to_dict()
    assert "max_steps" not in saved["inner_loop"]  # what config.json held before the option existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_run_folder(TrainConfig(output_dir=str(tmp_path), rounds=1, resume=True))
    with pytest.raises(TrainSetupError, match="inner_loop"):
        check_run_folder(TrainConfig(output_dir=str(tmp_path), rounds=1, resume=True, inner_loop=InnerLoopConfig(max_steps=30)))


def test_learning_verdict_says_plainly_whether_the_change_is_evidence():
    from agents.held_out import learning_verdict

    def rounds(low: float, high: float) -> list[dict]:
        change = {"mean": (low + high) / 2, "low": low, "high": high}
        return [{"round": 0, "n_contexts": 8},
                {"round": 3, "n_contexts": 8, "score_vs_round_0": change, "reward_vs_round_0": change}]

    learnt = learning_verdict(rounds(0.1, 0.3))
    assert "round 0 to round 3" in learnt and "+0.200 [+0.100, +0.300]" in learnt
    assert "evidence that the generator learnt" in learnt and "8 contexts" in learnt
    assert "not evidence of learning" in learning_verdict(rounds(-0.1, 0.3))
    assert "got worse" in learning_verdict(rounds(-0.3, -0.1))
    assert "none yet" in learning_verdict(rounds(0.1, 0.3)[:1])
