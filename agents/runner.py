"""The training job: rounds of agent training with held-out evaluation, logs, plots and resume.

:func:`train` runs an :class:`~agents.base.Agent` on an environment for ``rounds`` rounds. Round 0
evaluates the untrained generator; every later round trains on ``contexts_per_round`` contexts drawn
from the training pool and then evaluates on the same held-out contexts (never trained on). The
output folder holds:

``config.json``
    the job's settings, and the agent's under ``agent_config``.
``steps.jsonl``
    the append-only log: the self-edits of each round (written before they are stepped) and every
    environment step's result (written as each step completes), then one ``"round"`` line per
    finished round. ``--resume`` rebuilds the run's state from it: finished rounds are skipped,
    logged steps of an interrupted round are not stepped again. (With several processes, process
    ``k > 0`` appends its own steps to ``steps.rank<k>.jsonl``.)
``metrics.jsonl``
    one line of metrics per finished round.
``progress.png``
    mean reward and mean score per round (train and held-out).
``tensorboard/``
    TensorBoard event files of the same metrics (``tensorboard --logdir <output_dir>/tensorboard``).
``checkpoints/round-NNN/``
    the generator after the last finished round (what ``--resume`` loads).
``generator/``
    the trained generator at the end: a PEFT adapter (``adapter_config.json`` +
    ``adapter_model.safetensors``) for ``peft.PeftModel.from_pretrained(base_model, path)``.

Seeds are derived from ``(seed, round, phase)``, and every random choice uses them, so an interrupted
and resumed run ends in the same state as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import gymnasium as gym
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from tqdm.auto import tqdm

from agents.base import EVAL, TRAIN, Agent, Round, StepRecord, StepRequest
from agents.held_out import held_out_rounds
from agents.reporting import RunReport, step_score, summarize, write_atomic
from agents.run_log import RunLog
from agents.stepping import SequentialStepper, Stepper
from agents.train_config import (
    CONFIG_FILE,
    LOG_FILE,
    TrainConfig,
    TrainSetupError,
    agent_settings,
    check_run_folder,
    derive_seed,
    round_contexts,
    run_settings,
    split_contexts,
    to_json_safe,
)
from seal_env.models import pick_device

GENERATOR_DIR = "generator"
CHECKPOINTS_DIR = "checkpoints"

# Re-exported: the job's public names, wherever they live.
__all__ = [
    "CONFIG_FILE",
    "LOG_FILE",
    "RunLog",
    "TrainConfig",
    "TrainSetupError",
    "agent_settings",
    "check_run_folder",
    "step_score",
    "summarize",
    "train",
]


def train(
    agent: Agent,
    env: gym.Env,
    config: TrainConfig,
    *,
    stepper: Stepper | None = None,
) -> list[dict[str, Any]]:
    """Train ``agent`` on ``env`` for ``config.rounds`` rounds; return the metrics of every round.

    ``env`` must be a :class:`seal_env.env.SelfAdaptEnv` (possibly wrapped). With
    ``config.inner_model == "generator"`` its model must be a private copy of the generator's base
    model (not the shared one from ``load_model``): it is overwritten every round. ``stepper`` steps
    the environment (default: :class:`agents.stepping.SequentialStepper`; see
    :func:`agents.stepping.make_env` for the batched one).
    """
    return TrainingRun(agent, env, config, stepper or SequentialStepper(env)).run()


class TrainingRun:
    """One training job, read top to bottom in :meth:`run`: the log it resumes from, how it proposes
    and steps (what each :class:`~agents.base.Round` calls back), the held-out evaluation."""

    def __init__(self, agent: Agent, env: gym.Env, config: TrainConfig, stepper: Stepper):
        # On CPU, several processes (torchrun / accelerate launch) only form a group when asked for CPU.
        self.state = PartialState(cpu=pick_device(config.device).type == "cpu")
        self.agent, self.env, self.config, self.stepper = agent, env, config, stepper
        self.directory = Path(config.output_dir)
        settings = agent_settings(getattr(agent, "name", type(agent).__name__), getattr(agent, "config", None))
        if self.state.is_main_process:  # only it writes: the others would find its config.json and refuse
            check_run_folder(config, settings)
            if not config.resume:
                write_atomic(self.directory / CONFIG_FILE, json.dumps(run_settings(config, settings), indent=2) + "\n")
            else:  # an extended run's config.json states its new length
                _record_rounds(self.directory / CONFIG_FILE, config.rounds)
        self.state.wait_for_everyone()
        self.log = RunLog(self.directory, self.state.process_index)
        if config.resume:
            self.log.read()
        self.held_out, self.pool = split_contexts(env.get_wrapper_attr("num_contexts"), config)
        self.report = RunReport(self.directory, self.state.is_main_process)

    def run(self) -> list[dict[str, Any]]:
        """Every round not finished yet, then the final generator; the metrics of every round."""
        agent, config, log, state = self.agent, self.config, self.log, self.state
        history = log.rounds  # the finished rounds' metrics; _finish_round appends
        if history:
            agent.load(self.directory / CHECKPOINTS_DIR / f"round-{history[-1]['round']:03d}")
        for round_index in range(len(history), config.rounds + 1):
            start = time.perf_counter()
            self.sync_inner_model()
            metrics: dict[str, Any] = {"round": round_index}
            if round_index > 0:
                indices = round_contexts(self.pool, config, round_index)
                train_step = sum(m.get("agent/steps", 0) for m in history)
                learned = agent.train_round(
                    Round(
                        round_index, indices, self.observe(indices), derive_seed(config.seed, round_index, TRAIN), self,
                        logger=lambda values, s: self.report.scalars(values, train_step + s),
                    )
                )
                if state.num_processes > 1:  # steps a trainer took in each process (GRPO) are only known there
                    for record in gather_object(log.records(round_index, TRAIN)):
                        log.steps[record.key] = record
                metrics.update(summarize(log.records(round_index, TRAIN), TRAIN))
                metrics.update({f"agent/{k}": v for k, v in learned.items()})
                self.sync_inner_model()
            metrics.update(summarize(self.evaluate(round_index), EVAL))
            metrics["minutes"] = (time.perf_counter() - start) / 60
            _finish_round(agent, log, self.directory, metrics, state)
            self.report.round_finished(history, held_out_rounds(log, n_resamples=2_000) if state.is_main_process else ())
        if state.is_main_process:
            _save_atomic(agent, self.directory / GENERATOR_DIR)
        state.wait_for_everyone()
        self.report.close()
        return history

    def observe(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self.env.reset(options={"index": i})[0] for i in indices]

    def propose(self, round_index: int, phase: str, compute: Callable[[], list[list[str]]]) -> list[list[str]]:
        """The logged self-edits of ``(round, phase)``, or ``compute()``'s, logged before any step
        (computed by the main process and shared with the others)."""
        log, state = self.log, self.state
        if (round_index, phase) in log.proposals:
            return log.proposals[(round_index, phase)]
        self_edits = [compute() if state.is_main_process else None]
        if state.num_processes > 1:
            broadcast_object_list(self_edits)
        if state.is_main_process:
            log.append("proposals", {"round": round_index, "phase": phase, "self_edits": self_edits[0]})
        log.proposals[(round_index, phase)] = self_edits[0]
        return self_edits[0]

    def step(self, round_index: int, phase: str, requests: Sequence[StepRequest], shard: bool) -> list[StepRecord]:
        """One record per request: from the log when it holds the step, else stepped and logged."""
        log, state = self.log, self.state
        results: list[StepRecord | None] = []
        for request in requests:
            logged = log.steps.get((round_index, phase, request.context_index, request.sample))
            if logged is not None and logged.self_edit != request.self_edit:
                raise RuntimeError(
                    f"round {round_index} {phase}, context {request.context_index}, sample {request.sample}: the "
                    "logged self-edit differs from the one proposed now; the run is not reproducible as resumed"
                )
            results.append(logged)
        # Fixed chunks by position: a resumed run batches the remaining steps as the first run did.
        size = self.stepper.batch_size
        chunks = [range(start, min(start + size, len(requests))) for start in range(0, len(requests), size)]
        todo = [chunk for chunk in chunks if any(results[i] is None for i in chunk)]
        distributed = shard and state.num_processes > 1
        if distributed:  # the processes take turns at chunks
            todo = todo[state.process_index :: state.num_processes]
        mine = [i for chunk in todo for i in chunk if results[i] is None]
        # The bar counts this process's steps (the main process's share when the processes share them).
        done = 0 if distributed else len(requests) - len(mine)
        bar = tqdm(total=done + len(mine), initial=done, desc=f"round {round_index} {phase} steps",
                   disable=not state.is_main_process, leave=False)
        for chunk in todo:
            pending = [i for i in chunk if results[i] is None]
            for i, (reward, info) in zip(pending, self.stepper([requests[i] for i in pending])):
                r = requests[i]
                record = StepRecord(round_index, phase, r.context_index, r.sample, r.prompt, r.self_edit, reward,
                                    to_json_safe(info))
                log.append("step", asdict(record))
                log.steps[record.key] = results[i] = record
                bar.update()
        bar.close()
        if distributed:
            for record in gather_object([results[i] for i in mine]):
                log.steps[record.key] = record
            results = [log.steps[(round_index, phase, r.context_index, r.sample)] for r in requests]
        return results

    def evaluate(self, round_index: int) -> list[StepRecord]:
        """The held-out evaluation of the current generator (the same seed every round: rounds differ
        only by the policy)."""
        observations = self.observe(self.held_out)
        seed = derive_seed(self.config.seed, 0, EVAL)
        self_edits = self.propose(
            round_index, EVAL, lambda: self.agent.propose(observations, self.config.eval_samples, seed=seed)
        )
        requests = [
            StepRequest(index, sample, obs["prompt"], text)
            for index, obs, texts in zip(self.held_out, observations, self_edits)
            for sample, text in enumerate(texts)
        ]
        return self.step(round_index, EVAL, requests, True)

    def sync_inner_model(self) -> None:
        if self.config.inner_model == "generator":
            self.env.get_wrapper_attr("update_inner_model")(self.agent.sync_inner_model)


def _finish_round(agent: Agent, log: RunLog, directory: Path, metrics: dict[str, Any], state: PartialState) -> None:
    """Checkpoint the agent, then mark the round finished in the log (in this order: a crash between
    the two redoes the round's learning from the logged steps, never skips it)."""
    if state.is_main_process:
        checkpoints = directory / CHECKPOINTS_DIR
        _save_atomic(agent, checkpoints / f"round-{metrics['round']:03d}")
        log.append("round", {"round": metrics["round"], "metrics": metrics})
        for old in checkpoints.glob("round-*"):
            if old.name != f"round-{metrics['round']:03d}":
                shutil.rmtree(old)
    state.wait_for_everyone()
    log.rounds.append(metrics)


def _save_atomic(agent: Agent, target: Path) -> None:
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    agent.save(staging)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def _record_rounds(config_file: Path, rounds: int) -> None:
    """Set the round count in a resumed run's ``config.json`` (check_run_folder allowed only the same or more)."""
    saved = json.loads(config_file.read_text(encoding="utf-8"))
    if saved.get("rounds") != rounds:
        write_atomic(config_file, json.dumps({**saved, "rounds": rounds}, indent=2) + "\n")
