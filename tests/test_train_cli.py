"""``seal-env train`` from the command line, on a tiny model saved to disk: reproducibility, crash
and resume, and the safety of the output folder (issue #13)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


SEAL_ENV = [sys.executable, "-m", "seal_env.cli"]
TIMING_KEYS = {"train_seconds", "eval_seconds", "minutes"}
# One ReST-EM round, 2 training contexts x 2 samples, 2 held-out contexts: 10 steps. The huge negative
# margin rewards every usable self-edit, so that the round certainly fine-tunes the generator.
JOB = ["--rounds", "1", "--contexts-per-round", "2", "--eval-contexts", "2", "--num-envs", "1",
       "--samples-per-context", "2", "--max-new-tokens", "12", "--inner-epochs", "1", "--device", "cpu",
       "--env-kwargs", '{"max_answer_tokens": 4, "reward_margin": -1e9}']


def command(model_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return [*SEAL_ENV, "train", "--model", str(model_dir), "--output-dir", str(output_dir), *JOB, *extra]


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, **kwargs)


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def log_lines(directory: Path) -> list:
    lines = (directory / "steps.jsonl").read_text(encoding="utf-8").splitlines()
    return [without_timings(json.loads(line)) for line in lines]


def adapter(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "generator" / "adapter_model.safetensors")


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical generator adapters and the same logs, wall-clock fields aside."""
    first, second = adapter(a), adapter(b)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert log_lines(a) == log_lines(b)
    metrics = [[without_timings(json.loads(line)) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b)]
    assert metrics[0] == metrics[1]


@pytest.fixture(scope="module")
def reference_run(tiny_model_dir, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("cli") / "reference"
    result = run(command(tiny_model_dir, output))
    assert result.returncode == 0, result.stderr[-3000:]
    last_lines = result.stdout.strip().splitlines()[-4:]  # the held-out change from round 0, said plainly
    assert last_lines[0].startswith("Held-out change from round 0 to round 1") and "evidence" in last_lines[-1]
    return output


def test_two_same_seed_runs_give_bit_identical_adapters_and_logs(reference_run, tiny_model_dir, tmp_path):
    result = run(command(tiny_model_dir, tmp_path / "again"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(reference_run, tmp_path / "again")
    assert any(tensor.abs().sum() > 0 for name, tensor in adapter(reference_run).items() if "lora_B" in name)


def kill_mid_round(args: list[str], log: Path, steps: int) -> None:
    """Start the job and SIGKILL it once ``steps`` steps are in its log."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if log.exists() and log.read_bytes().count(b'"kind": "step"') >= steps:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the job finished before it could be killed"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def test_a_run_killed_mid_round_and_resumed_equals_an_uninterrupted_run(reference_run, tiny_model_dir, tmp_path):
    killed = tmp_path / "killed"
    kill_mid_round(command(tiny_model_dir, killed), killed / "steps.jsonl", steps=4)  # round 1, training
    data = (killed / "steps.jsonl").read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1  # the last line
    line_end = len(data.rstrip(b"\n"))
    # A kill can cut the last line anywhere: keep it whole, or cut off its newline, half of it, or all
    # but its first byte. (tests/test_jsonl.py covers every byte position of the reader.)
    for name, end in {"whole": len(data), "no-newline": line_end, "half": (start + line_end) // 2,
                      "one-byte": start + 1}.items():
        resumed = tmp_path / name
        shutil.copytree(killed, resumed)
        (resumed / "steps.jsonl").write_bytes(data[:end])
        result = run(command(tiny_model_dir, resumed, "--resume"))
        assert result.returncode == 0, (name, result.stderr[-3000:])
        assert_same_run(reference_run, resumed)


def test_resume_accepts_reordered_env_kwargs_and_an_omitted_device(reference_run, tiny_model_dir, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(reference_run, resumed)
    args = command(tiny_model_dir, resumed, "--resume")
    args[args.index("--env-kwargs") + 1] = '{ "reward_margin" : -1e9,"max_answer_tokens":4 }'
    del args[args.index("--device") : args.index("--device") + 2]
    result = run(args)
    assert result.returncode == 0, result.stderr[-3000:]
    changed = command(tiny_model_dir, resumed, "--resume")
    changed[changed.index("--env-kwargs") + 1] = '{"max_answer_tokens": 5, "reward_margin": -1e9}'
    result = run(changed)
    assert result.returncode == 2 and "env_kwargs" in result.stderr


@pytest.mark.parametrize("content", ["user-files", "config-only"])
def test_a_fresh_run_refuses_a_folder_it_did_not_write_and_touches_nothing(tiny_model_dir, tmp_path, content):
    folder = tmp_path / "mine"
    (folder / "generator").mkdir(parents=True)
    (folder / "generator" / "thesis.tex").write_text("years of work")
    (folder / "checkpoints" / "round-000").mkdir(parents=True)
    if content == "config-only":  # a run that stopped before its first step
        shutil.rmtree(folder / "generator"), shutil.rmtree(folder / "checkpoints")
        (folder / "config.json").write_text('{"rounds": 9}')
    before = {p: p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}
    started = time.monotonic()
    result = run(command(tiny_model_dir, folder) + ["--model", "/nonexistent/model"])  # refused before any load
    assert result.returncode == 2, result.stderr[-3000:]
    assert ("already holds a run" if content == "config-only" else "not empty") in result.stderr
    assert "Traceback" not in result.stderr
    assert {p: p.read_bytes() if p.is_file() else None for p in folder.rglob("*")} == before
    assert time.monotonic() - started < 120


def test_an_unwritable_output_folder_is_a_clear_error_before_any_model_loads(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run([*SEAL_ENV, "train", "--model", "/nonexistent/model", "--output-dir", str(blocker / "run")])
    assert result.returncode == 2 and "not writable" in result.stderr and "Traceback" not in result.stderr
