"""The cost of stepping a served environment (``seal-env serve`` and :class:`seal_env.serve.RemoteEnv`)
against stepping the same environment in this process, on the same self-edits, in one run.

The server runs in a subprocess, as a user runs it, on the same model, environment settings and
number of torch threads as the in-process environment; the inner loop is the training job's
(:class:`agents.train_config.TrainConfig`), as ``seal-env train --env-url`` steps. Two kinds of step:

* ``update``: a real step (LoRA update and evaluation) on a built-in passage restated one sentence
  per line;
* ``rejected``: an empty self-edit, which the environment rejects before any training, so that the
  step is nothing but the request, the bookkeeping and the reply: the protocol's own cost.

Every (context, repeat) is stepped in-process and remotely, one right after the other, in
alternating order; the time of a step is that of ``reset`` plus ``step``, as the training job calls
them. The baselines of every context are computed on both sides before the timings. For each kind
the script reports the median seconds per step on each side and the paired overhead (remote minus
in-process): its mean with a 95% bootstrap interval over the pairs, its median, and as a share of
an in-process update step. It also checks that both sides returned the same rewards and scores.

Usage: python benchmarks/serve_overhead.py [--contexts 4] [--repeats 3] [--threads 1]
           [--json results/serve/serve_overhead.json]
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import gymnasium as gym
import torch

import seal_env  # noqa: F401  (registers the environments)
from _common import bootstrap_ci, format_interval, markdown_table, restatement, run_environment, write_results
from agents.train_config import TrainConfig
from seal_env.config_cli import parse_config
from seal_env.models import load_model

ENV_ID = "seal_env/KnowledgeIncorporation-v0"


@dataclass
class ServeBenchConfig:
    """Settings of a run; the command line maps one to one onto these fields."""

    contexts: int = 4
    """Built-in passages stepped (one self-edit each)."""
    repeats: int = 3
    """Times each context is stepped on each side."""
    threads: int = 1
    """torch threads of the in-process environment and of the server."""
    model: str | None = None
    """Inner model (default: the embedded SmolLM2-135M-Instruct)."""
    startup_timeout: float = 300.0
    """Seconds to wait for the server to answer."""
    json: str = "results/serve/serve_overhead.json"
    """Where to write the results (a markdown table beside it)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(config: ServeBenchConfig, env_kwargs: dict, port: int) -> subprocess.Popen:
    """``seal-env serve`` in a subprocess, returned once it answers ``/health``."""
    import httpx

    args = [sys.executable, "-m", "seal_env.cli", "serve", "--env", ENV_ID, "--port", str(port),
            "--env-kwargs", json.dumps(env_kwargs)]
    if config.model is not None:
        args += ["--model", config.model]
    threads = str(config.threads)
    process = subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + config.startup_timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"seal-env serve exited with {process.returncode}: {process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"seal-env serve did not answer within {config.startup_timeout:.0f} s")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.5)


def timed_step(env: gym.Env, index: int, self_edit: str) -> tuple[float, float, float | None]:
    """Seconds of ``reset`` + ``step`` on context ``index``, the reward and the score."""
    start = time.perf_counter()
    env.reset(options={"index": index})
    _, reward, _, _, info = env.step(self_edit)
    return time.perf_counter() - start, float(reward), info.get("score")


def summarise(local: list[float], remote: list[float], update_seconds: float) -> dict:
    """Both sides' seconds and the paired overhead, also as a share of an in-process update step
    (``update_seconds``): what serving adds to the step a user waits for."""
    overhead = [r - l for l, r in zip(local, remote)]
    return {
        "local_seconds": {"median": statistics.median(local), "all": local},
        "remote_seconds": {"median": statistics.median(remote), "all": remote},
        "overhead_seconds": bootstrap_ci(overhead).to_dict() | {"median": statistics.median(overhead)},
        "overhead_share_of_update_step": statistics.median(overhead) / update_seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(ServeBenchConfig, argv, __doc__.split("\n\n")[0])
    from seal_env.serve import RemoteEnv

    torch.set_num_threads(config.threads)
    inner_loop = TrainConfig().inner_loop
    local = gym.make(ENV_ID, model=load_model(config.model, device="cpu"), inner_loop=inner_loop)
    contexts = list(range(min(config.contexts, local.get_wrapper_attr("num_contexts"))))
    self_edits = {i: restatement(local.reset(options={"index": i})[0]["context"]) for i in contexts}
    kinds = {"update": self_edits, "rejected": {i: "" for i in contexts}}

    port = free_port()
    start = time.perf_counter()
    server = start_server(config, {"inner_loop": inner_loop.to_dict()}, port)
    remote = RemoteEnv(f"http://127.0.0.1:{port}")
    startup_seconds = time.perf_counter() - start
    seconds = {kind: {"local": [], "remote": []} for kind in kinds}
    outcomes = {"local": [], "remote": []}
    try:
        for i in contexts:  # the baselines, outside the timings
            for env in (local, remote):
                timed_step(env, i, self_edits[i])
        for repeat in range(config.repeats):
            for kind, edits in kinds.items():
                for i in contexts:
                    sides = {"local": local, "remote": remote}
                    order = list(sides) if (repeat + i) % 2 == 0 else list(reversed(sides))
                    for side in order:
                        elapsed, reward, score = timed_step(sides[side], i, edits[i])
                        seconds[kind][side].append(elapsed)
                        outcomes[side].append((kind, i, repeat, reward, score))
                print(f"repeat {repeat} {kind}: local {sum(seconds[kind]['local'][-len(contexts):]):.1f} s, "
                      f"remote {sum(seconds[kind]['remote'][-len(contexts):]):.1f} s", file=sys.stderr, flush=True)
    finally:
        remote.close()
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
        local.close()

    update_seconds = statistics.median(seconds["update"]["local"])
    rows = {kind: summarise(times["local"], times["remote"], update_seconds) for kind, times in seconds.items()}
    same = outcomes["local"] == outcomes["remote"]
    result = {"config": vars(config), "inner_loop": inner_loop.to_dict(), "kinds": rows,
              "server_startup_seconds": startup_seconds, "same_rewards_and_scores": same,
              "environment": run_environment()}
    table = [[kind, f"{row['local_seconds']['median']:.3f}", f"{row['remote_seconds']['median']:.3f}",
              format_interval(row["overhead_seconds"], scale=1000, digits=1),
              f"{1000 * row['overhead_seconds']['median']:.1f}", f"{100 * row['overhead_share_of_update_step']:.2f}%"]
             for kind, row in rows.items()]
    markdown = markdown_table(["step", "in-process s (median)", "served s (median)", "overhead ms (mean [95% CI])",
                               "overhead ms (median)", "overhead / in-process update step"], table)
    markdown += (f"\n{len(contexts)} contexts x {config.repeats} repeats per kind, {config.threads} torch thread(s) on "
                 f"each side; server start-up (process, model load) {startup_seconds:.0f} s; same rewards and scores "
                 f"in-process and served: {same}\n")
    write_results(config.json, result, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
