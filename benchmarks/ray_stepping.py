"""Throughput of local stepping against :class:`agents.stepping.RayStepper`, on the same self-edits.

The self-edits are the built-in passages restated one sentence per line (deterministic: every
stepper steps the very same requests). Each stepper steps all of them once per repeat, in
alternating order, in one run of this script:

* ``local``: :class:`SequentialStepper` in this process, torch on ``--threads`` threads (all cores);
* ``local batched``: :class:`VectorStepper` with ``--workers`` slots in this process (multi-LoRA);
* ``ray``: :class:`RayStepper` with ``--workers`` actors of one CPU (one torch thread) each.

It reports self-edits per minute (median and range over the repeats), the ratio to ``local``, the
start-up cost of the Ray actors (cluster start and model loads, paid once per job), and whether every
stepper returned the same rewards and scores. The inner loop is the training job's
(:class:`agents.train_config.TrainConfig`), as ``seal-env train`` steps.

Usage: python benchmarks/ray_stepping.py [--steps 8] [--repeats 2] [--json results/ray_stepping/ray_stepping.json]
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import torch

import seal_env  # noqa: F401  (registers the environments)
from _common import markdown_table, restatement, run_environment, write_results
from agents.base import StepRequest
from agents.stepping import RayStepper, SequentialStepper, Stepper, make_env
from agents.train_config import TrainConfig
from seal_env.config_cli import parse_config
from seal_env.models import load_model

ENV_ID = "seal_env/KnowledgeIncorporation-v0"


@dataclass
class RayBenchConfig:
    """Settings of a run; the command line maps one to one onto these fields."""

    steps: int = 8
    """Self-edits stepped by each stepper per repeat."""
    repeats: int = 2
    """Times each stepper steps them (in alternating order)."""
    workers: int = 2
    """Ray actors (and slots of the local batched stepper)."""
    threads: int = 2
    """torch threads of the local steppers (the Ray actors use one each)."""
    model: str | None = None
    """Inner model (default: the embedded SmolLM2-135M-Instruct)."""
    json: str = "results/ray_stepping/ray_stepping.json"
    """Where to write the results (a markdown table beside it)."""


def timed(stepper: Stepper, requests: Sequence[StepRequest]) -> tuple[float, list[tuple[float, float | None]]]:
    """Wall seconds for stepping ``requests`` in the runner's fixed chunks, and (reward, score) of each."""
    start = time.perf_counter()
    results = []
    for i in range(0, len(requests), stepper.batch_size):
        results += [(reward, info.get("score")) for reward, info in stepper(requests[i : i + stepper.batch_size])]
    return time.perf_counter() - start, results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_config(RayBenchConfig, argv, __doc__.split("\n\n")[0])
    import ray

    torch.set_num_threads(args.threads)
    inner_loop = TrainConfig().inner_loop
    model = load_model(args.model, device="cpu")
    local_env, batched = make_env(ENV_ID, args.workers, model=model, inner_loop=inner_loop, device="cpu")
    n_contexts = local_env.get_wrapper_attr("num_contexts")
    requests = []
    for k in range(args.steps):
        obs, _ = local_env.reset(options={"index": k % n_contexts})
        requests.append(StepRequest(k % n_contexts, k, obs["prompt"], restatement(obs["context"])))
    for index in sorted({r.context_index for r in requests}):  # baselines outside the timings
        local_env.get_wrapper_attr("baseline")(index)

    start = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    ray_stepper = RayStepper(ENV_ID, args.workers, num_envs=1,
                             env_kwargs=dict(model=args.model, inner_loop=inner_loop, device="cpu"))
    ray_stepper.worker_pids()  # returns once every actor has loaded its model
    # In the same positions, so each actor computes the baselines of its contexts, as done locally above.
    timed(ray_stepper, [StepRequest(r.context_index, -1, r.prompt, "A warm-up line.") for r in requests])
    startup_seconds = time.perf_counter() - start

    steppers: dict[str, Stepper] = {"local": SequentialStepper(local_env), "local batched": batched, "ray": ray_stepper}
    seconds: dict[str, list[float]] = {name: [] for name in steppers}
    outcomes: dict[str, list] = {}
    for repeat in range(args.repeats):
        order = list(steppers) if repeat % 2 == 0 else list(reversed(steppers))
        for name in order:
            elapsed, outcomes[name] = timed(steppers[name], requests)
            seconds[name].append(elapsed)
            print(f"repeat {repeat} {name}: {elapsed:.1f} s", file=sys.stderr, flush=True)
    ray_stepper.close()
    ray.shutdown()

    per_minute = {name: [60 * args.steps / s for s in values] for name, values in seconds.items()}
    base = statistics.median(per_minute["local"])
    rows, table = {}, []
    for name, values in per_minute.items():
        median = statistics.median(values)
        rows[name] = {"self_edits_per_minute": {"median": median, "min": min(values), "max": max(values)},
                      "seconds": seconds[name], "ratio_to_local": median / base}
        table.append([name, f"{median:.2f} [{min(values):.2f}, {max(values):.2f}]", f"{median / base:.2f}x"])
    same = {name: outcomes[name] == outcomes["local"] for name in steppers}
    result = {
        "config": vars(args), "inner_loop": vars(inner_loop), "steppers": rows,
        "ray_startup_seconds": startup_seconds, "same_rewards_and_scores_as_local": same,
        "environment": run_environment(),
    }
    markdown = markdown_table(["stepper", "self-edits / min (median [min, max] over repeats)", "vs local"], table)
    markdown += (f"\n{args.steps} self-edits x {args.repeats} repeats; Ray start-up (cluster, {args.workers} model loads, "
                 f"baselines): {startup_seconds:.0f} s; same rewards and scores as local: {same}\n")
    write_results(args.json, result, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
