"""Environment steps on Ray actors (agents.stepping.RayStepper) against local stepping: same rewards
and ``info``, a killed actor restarted and its requests retried, a lost one named, and a run that
loses a worker resumed to the uninterrupted run's log (issue #16). A local Ray cluster of 2 CPUs is
started for this module and shut down after it, whatever the tests' outcome."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import seal_env  # noqa: F401  (registers the environments)
from agents.base import StepRequest
from agents.rest_em import RestEMAgent, RestEMConfig
from agents.runner import TrainConfig, train
from agents.stepping import RayStepper, SequentialStepper, WorkerLostError
from conftest import make_tiny_model
from seal_env.inner_loop import InnerLoopConfig

ray = pytest.importorskip("ray")

KNOWLEDGE = "seal_env/KnowledgeIncorporation-v0"
TIMING_KEYS = {"train_seconds", "eval_seconds", "minutes"}
SELF_EDITS = [
    "The Velmora Bridge was designed by Talia Okonkwe-Brandt.\nIt opened to traffic in 1931.",
    "",  # unusable: reward 0 with an error, on an actor as locally
    "1. The bridge is painted deep ochre.\n2. Its towers are green granite.",
    "Velmora gold is the colour of the bridge.",
    "Bridges span rivers.",
    "The span is 1,240 metres long.\nIt is painted ochre.",
    "<|im_end|> special tokens are plain text here",
    "One more self-edit about the bridge.",
]


@pytest.fixture(scope="module")
def tiny_model_dir(tokenizer, tmp_path_factory) -> Path:
    """The tiny test model as a folder that each actor loads by path (as ``--model`` would)."""
    directory = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(tokenizer, seed=1).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The actors run with one thread each (Ray's default for one CPU); the local reference does too,
    # so that both reduce in the same order.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def env_kwargs(model_dir: Path, **overrides) -> dict:
    return dict(model=str(model_dir), inner_loop=InnerLoopConfig(rank=4, epochs=1, batch_size=8), max_answer_tokens=2,
                device="cpu", **overrides)


def requests(n: int = len(SELF_EDITS)) -> list[StepRequest]:
    return [StepRequest(k % 3, k, "prompt", SELF_EDITS[k % len(SELF_EDITS)]) for k in range(n)]


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


@pytest.fixture(scope="module")
def local_results(tiny_model_dir):
    """What a local SequentialStepper gives for the requests."""
    stepper = SequentialStepper(gym.make(KNOWLEDGE, **env_kwargs(tiny_model_dir)))
    return [(reward, without_timings(info)) for reward, info in stepper(requests())]


def test_train_command_runs_on_a_local_ray_cluster(tiny_model_dir, tmp_path):
    """``seal-env train --ray-address local --ray-workers 2`` end to end, in a subprocess that starts
    and stops its own cluster (first in the module: before this module's cluster is up)."""
    output = tmp_path / "run"
    args = [sys.executable, "-m", "seal_env.cli", "train", "--model", str(tiny_model_dir), "--output-dir", str(output),
            "--rounds", "1", "--contexts-per-round", "2", "--eval-contexts", "1", "--num-envs", "1",
            "--samples-per-context", "2", "--max-new-tokens", "8", "--inner-epochs", "1", "--device", "cpu",
            "--ray-address", "local", "--ray-workers", "2", "--env-kwargs", '{"max_answer_tokens": 2}']
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(step_lines(output)) == 6
    assert json.loads((output / "config.json").read_text())["ray_workers"] == 2


def test_ray_workers_step_exactly_as_the_local_stepper(ray_cluster, tiny_model_dir, local_results):
    with RayStepper(KNOWLEDGE, 2, env_kwargs=env_kwargs(tiny_model_dir), num_envs=1) as stepper:
        assert stepper.batch_size == 2
        assert len(set(stepper.worker_pids())) == 2 and os.getpid() not in stepper.worker_pids()
        results = [(reward, without_timings(info)) for reward, info in stepper(requests())]
    assert results == local_results
    assert results[1][0] == 0.0 and results[1][1]["error"]  # the bad self-edit, as locally
    assert len({r for r, _ in results}) > 1 or len({i["score"] for _, i in results}) > 2  # not all the same


def test_a_killed_worker_is_restarted_and_its_requests_retried(ray_cluster, tiny_model_dir, local_results):
    with RayStepper(KNOWLEDGE, 2, env_kwargs=env_kwargs(tiny_model_dir), num_envs=1) as stepper:
        before = stepper.worker_pids()
        results = stepper(requests())  # worker 1 steps requests 1, 3, 5, 7
        first = next(results)
        os.kill(before[1], signal.SIGKILL)  # mid-call: its later requests are queued or running
        collected = [first, *results]
        after = stepper.worker_pids()
    assert after[0] == before[0] and after[1] != before[1], "Ray restarted the killed worker"
    assert [(reward, without_timings(info)) for reward, info in collected] == local_results


def test_a_worker_lost_for_good_names_its_requests_after_yielding_the_earlier_results(ray_cluster, tiny_model_dir,
                                                                                        local_results):
    with RayStepper(KNOWLEDGE, 2, env_kwargs=env_kwargs(tiny_model_dir), num_envs=1, max_restarts=0) as stepper:
        pid = stepper.worker_pids()[1]
        results = stepper(requests())
        yielded = [next(results)]
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerLostError, match=r"\(context \d+, sample \d+\).*--resume"):
            for result in results:
                yielded.append(result)
    assert [(reward, without_timings(info)) for reward, info in yielded] == local_results[: len(yielded)]


class KillingStepper:
    """A RayStepper whose worker 1 is SIGKILLed after the ``kill_after``-th result (a crash mid-run)."""

    def __init__(self, stepper: RayStepper, kill_after: int):
        self.stepper, self.kill_after, self.steps = stepper, kill_after, 0
        self.batch_size = stepper.batch_size

    def __call__(self, chunk):
        for result in self.stepper(chunk):
            self.steps += 1
            yield result
            if self.steps == self.kill_after:
                os.kill(self.stepper.worker_pids()[1], signal.SIGKILL)


def run_rest_em(tokenizer, model_dir: Path, directory: Path, stepper, *, resume: bool = False):
    """One ReST-EM round of 6 steps; a huge negative margin rewards every usable self-edit."""
    env = gym.make(KNOWLEDGE, **env_kwargs(model_dir, reward_margin=-1e9))
    config = RestEMConfig(samples_per_context=2, keep="rewarded", sft_epochs=1, max_new_tokens=8, lora_rank=4, lora_alpha=8.0)
    agent = RestEMAgent(make_tiny_model(tokenizer), tokenizer, config)
    job = TrainConfig(output_dir=str(directory), rounds=1, contexts_per_round=2, eval_contexts=1, resume=resume, seed=1)
    return train(agent, env, job, stepper=stepper or SequentialStepper(env))


def step_lines(directory: Path) -> list:
    lines = [json.loads(line) for line in (directory / "steps.jsonl").read_text(encoding="utf-8").splitlines()]
    steps = [without_timings(line) for line in lines if line["kind"] == "step"]
    return sorted(steps, key=lambda s: (s["round"], s["phase"], s["context_index"], s["sample"]))


def test_a_run_that_loses_a_worker_resumes_to_the_local_run(ray_cluster, tokenizer, tiny_model_dir, tmp_path):
    local = tmp_path / "local"
    run_rest_em(tokenizer, tiny_model_dir, local, None)
    crashed = tmp_path / "ray"
    kwargs = env_kwargs(tiny_model_dir, reward_margin=-1e9)
    with RayStepper(KNOWLEDGE, 2, env_kwargs=kwargs, num_envs=1, max_restarts=0) as lost:
        with pytest.raises(WorkerLostError):
            run_rest_em(tokenizer, tiny_model_dir, crashed, KillingStepper(lost, kill_after=2))
    logged = len(step_lines(crashed))
    assert 2 <= logged < 6, "the results before the loss are in the log, the rest are not"
    with RayStepper(KNOWLEDGE, 2, env_kwargs=kwargs, num_envs=1) as stepper:
        run_rest_em(tokenizer, tiny_model_dir, crashed, stepper, resume=True)
    assert step_lines(crashed) == step_lines(local)
    metrics = [[without_timings(json.loads(line)) for line in (d / "metrics.jsonl").read_text().splitlines()]
               for d in (local, crashed)]
    assert metrics[0] == metrics[1]
