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
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import gymnasium as gym
import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from tqdm.auto import tqdm

from agents.base import EVAL, TRAIN, Agent, Round, StepRecord, StepRequest
from agents.stepping import SequentialStepper, Stepper
from seal_env.inner_loop import InnerLoopConfig
from seal_env.jsonl import append_jsonl, read_jsonl
from seal_env.models import pick_device

LOG_FILE = "steps.jsonl"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
PLOT_FILE = "progress.png"
GENERATOR_DIR = "generator"
CHECKPOINTS_DIR = "checkpoints"


class TrainSetupError(ValueError):
    """The job cannot start as configured (output folder, resume, too few contexts)."""


def _fast_inner_loop() -> InnerLoopConfig:
    # Two epochs over the self-edit's lines in one batch: ~4 s per step on 2 CPU cores instead of ~25 s
    # for the environment's default (5 epochs, batch 1), so that the default job fits in ~15 minutes.
    return InnerLoopConfig(epochs=2, batch_size=8, max_tokens_per_example=128)


@dataclass
class TrainConfig:
    """Settings of the training job (``seal-env train``); the agent's own settings are its config."""

    env: str = "seal_env/KnowledgeIncorporation-v0"
    """Registered environment id (``seal-env envs`` lists them)."""
    agent: Literal["rest-em", "grpo"] = "rest-em"
    """The learning algorithm."""
    output_dir: str = "runs/train"
    """Folder for config, logs, metrics, plot, TensorBoard files and the trained generator."""
    resume: bool = False
    """Continue the interrupted run in output_dir from its log (same settings required)."""
    rounds: int = 2
    """Training rounds (each followed by a held-out evaluation; round 0 evaluates the untrained generator)."""
    contexts_per_round: int = 4
    """Training contexts drawn (without replacement) from the training pool in each round."""
    eval_contexts: int = 4
    """Held-out contexts, set aside once and never trained on."""
    eval_samples: int = 1
    """Self-edits sampled per held-out context at each evaluation."""
    seed: int = 0
    """Seed of every random choice (contexts, sampling, training)."""
    model: str | None = None
    """Generator and inner model: a Hugging Face id or local path (default: the embedded SmolLM2-135M-Instruct)."""
    inner_model: Literal["base", "generator"] = "base"
    """What the environment's inner loop updates: the frozen 'base' model, or the current 'generator' (its
    LoRA merged into a private copy at every round; baselines are recomputed; the SEAL paper's setting)."""
    env_kwargs: str = "{}"
    """Extra keyword arguments of the environment as JSON, e.g. '{"passages": "data.json", "reward_metric": "f1"}'."""
    device: str | None = None
    """Device of the models (default: CUDA when available, else CPU)."""
    num_envs: int = 4
    """Self-edits stepped together through the batched vector environment (1: one after another)."""
    inner_loop: InnerLoopConfig = field(default_factory=_fast_inner_loop)
    """The LoRA update of each environment step (smaller than the environment's default, for speed)."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("rounds", "contexts_per_round", "eval_contexts", "eval_samples", "num_envs"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.inner_model not in ("base", "generator"):
            problems.append(f"inner_model must be 'base' or 'generator', got {self.inner_model!r}")
        try:
            kwargs = json.loads(self.env_kwargs)
        except json.JSONDecodeError as exc:
            problems.append(f"env_kwargs is not valid JSON ({exc})")
        else:
            if not isinstance(kwargs, dict):
                problems.append("env_kwargs must be a JSON object")
            elif {"model", "inner_loop"} & set(kwargs):
                problems.append("env_kwargs cannot set model or inner_loop: use --model and the --inner-* options")
        if isinstance(self.inner_loop, dict):
            self.inner_loop = InnerLoopConfig(**self.inner_loop)
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def derive_seed(seed: int, round_index: int, phase: str) -> int:
    """A 31-bit seed for one round and phase, independent of everything that ran before."""
    phase_id = {TRAIN: 0, EVAL: 1}[phase]
    return int(np.random.SeedSequence([seed, round_index, phase_id]).generate_state(1)[0] & 0x7FFFFFFF)


def split_contexts(n_contexts: int, config: TrainConfig) -> tuple[list[int], list[int]]:
    """``(held_out, training_pool)``: a seeded split of the environment's context indices."""
    needed = config.eval_contexts + config.contexts_per_round
    if n_contexts < needed:
        raise TrainSetupError(
            f"the environment has {n_contexts} contexts, but eval_contexts + contexts_per_round = {needed}; "
            "lower them or give the environment more data"
        )
    order = np.random.default_rng(np.random.SeedSequence([config.seed, 2**20])).permutation(n_contexts).tolist()
    return sorted(order[: config.eval_contexts]), order[config.eval_contexts :]


def round_contexts(pool: Sequence[int], config: TrainConfig, round_index: int) -> list[int]:
    """The training contexts of a round, drawn from ``pool`` with the round's seed."""
    rng = np.random.default_rng(derive_seed(config.seed, round_index, TRAIN))
    return [pool[i] for i in rng.choice(len(pool), size=config.contexts_per_round, replace=False)]


def to_json_safe(value: Any) -> Any:
    """``value`` as plain JSON types (what the log stores and what a resumed run reads back)."""

    def convert(obj: Any) -> Any:
        if isinstance(obj, (np.generic, torch.Tensor)):
            return obj.item() if obj.ndim == 0 else obj.tolist()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        return repr(obj)

    return json.loads(json.dumps(value, default=convert))


def step_score(record: StepRecord) -> float | None:
    """The score a step left the model with: the baseline's when the self-edit was unusable (the model
    was not changed), so that a generator writing unusable self-edits does not look good."""
    score = record.info.get("score")
    return record.info.get("baseline_score") if score is None else score


def summarize(records: Sequence[StepRecord], prefix: str) -> dict[str, float]:
    """Mean reward, score and gain over a phase's records, and the share of unusable self-edits."""
    scores = [s for s in map(step_score, records) if s is not None]
    gains = [s - r.info["baseline_score"] for s, r in zip(map(step_score, records), records) if s is not None]
    return {
        f"{prefix}/reward": float(np.mean([r.reward for r in records])),
        f"{prefix}/score": float(np.mean(scores)) if scores else math.nan,
        f"{prefix}/gain": float(np.mean(gains)) if gains else math.nan,
        f"{prefix}/errors": float(np.mean([r.info.get("error") is not None for r in records])),
    }


class RunLog:
    """The run's append-only log and the state read back from it.

    Attributes:
        steps: logged step records by key ``(round, phase, context_index, sample)``.
        proposals: logged self-edits by ``(round, phase)``.
        rounds: metrics of the finished rounds, in order.
    """

    def __init__(self, directory: Path, rank: int = 0):
        self.directory = directory
        self.path = directory / (LOG_FILE if rank == 0 else f"steps.rank{rank}.jsonl")
        self.steps: dict[tuple[int, str, int, int], StepRecord] = {}
        self.proposals: dict[tuple[int, str], list[list[str]]] = {}
        self.rounds: list[dict[str, Any]] = []

    def read(self, *, repair: bool = True) -> None:
        """Load every log file of the run (all processes' step logs). A last line cut off by a crash
        is handled as :func:`seal_env.jsonl.read_jsonl` says, and with ``repair`` the file is fixed
        (a reader that must not write, or a run still writing, passes ``repair=False``); any other
        malformed line is an error."""
        for path in sorted(self.directory.glob("steps*.jsonl")):
            for entry in read_jsonl(path, repair=repair):
                kind = entry.pop("kind") if isinstance(entry, dict) else None
                if kind == "step":
                    record = StepRecord(**entry)
                    self.steps[record.key] = record
                elif kind == "proposals":
                    self.proposals[(entry["round"], entry["phase"])] = entry["self_edits"]
                elif kind == "round":
                    self.rounds.append(entry["metrics"])
                else:
                    raise ValueError(f"{path}: a line of unknown kind {kind!r}")
        self.rounds.sort(key=lambda m: m["round"])
        if [m["round"] for m in self.rounds] != list(range(len(self.rounds))):
            raise ValueError(f"{self.directory}: the log's finished rounds are not 0, 1, 2, ...")

    def records(self, round_index: int, phase: str) -> list[StepRecord]:
        """The logged steps of one round and phase, in key order."""
        return [record for key, record in sorted(self.steps.items()) if key[:2] == (round_index, phase)]

    def append(self, kind: str, entry: dict[str, Any]) -> None:
        append_jsonl(self.path, {"kind": kind, **entry})


class _Outputs:
    """Everything the main process writes besides the log: metrics, table, plot, TensorBoard."""

    def __init__(self, directory: Path, enabled: bool):
        self.directory = directory
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(directory / "tensorboard"))

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(name, value, step)
            self.writer.flush()

    def round_finished(self, history: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        latest = history[-1]
        self.scalars({k: v for k, v in latest.items() if k != "round"}, latest["round"])
        _write_atomic(self.directory / METRICS_FILE, "".join(json.dumps(m) + "\n" for m in history))
        tqdm.write(format_table(history))
        plot_progress(history, self.directory / PLOT_FILE)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _write_atomic(path: Path, text: str) -> None:
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def format_table(history: Sequence[dict[str, Any]]) -> str:
    """The metrics of every finished round as a text table, one row per round."""
    columns = ["round"] + sorted({k for m in history for k in m if k != "round"}, key=_column_order)
    rows = [[_cell(m.get(c)) for c in columns] for m in history]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _column_order(name: str) -> tuple[int, str]:
    return ({"train": 0, "agent": 1, "eval": 2}.get(name.split("/")[0], 3), name)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def plot_progress(history: Sequence[dict[str, Any]], path: Path) -> None:
    """Mean reward (left) and mean score (right) per round, train and held-out, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (reward_ax, score_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in ((reward_ax, "reward"), (score_ax, "score")):
        for phase, style in ((TRAIN, "o--"), (EVAL, "s-")):
            points = [(m["round"], m[f"{phase}/{metric}"]) for m in history if f"{phase}/{metric}" in m]
            if points:
                ax.plot(*zip(*points), style, label="held-out" if phase == EVAL else "training samples")
        ax.set_xlabel("round")
        ax.set_ylabel(f"mean {metric}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    reward_ax.set_title("reward (1 = beat the baseline)")
    score_ax.set_title("score of the adapted inner model")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def agent_settings(name: str, config: Any) -> dict[str, Any] | None:
    """An agent's own settings as JSON: its name and its ``config`` dataclass (as the built-in agents
    have), or None when ``config`` is not a dataclass."""
    return {"agent": name, **to_json_safe(asdict(config))} if is_dataclass(config) else None


def run_settings(config: TrainConfig, agent_config: dict[str, Any] | None) -> dict[str, Any]:
    """What ``config.json`` holds: the job's settings and, under ``agent_config``, the agent's."""
    settings = to_json_safe(config.to_dict())
    if agent_config is not None:
        settings["agent_config"] = agent_config
    return settings


def check_run_folder(config: TrainConfig, agent_config: dict[str, Any] | None = None) -> None:
    """Raise :class:`TrainSetupError` unless ``config.output_dir`` can take this job.

    A new run needs a new or empty folder that it can write to: it never writes into a folder of
    other files (it would replace ``generator/`` and ``checkpoints/`` there), nor over another run.
    ``--resume`` needs a run with the same settings (the agent's settings too, when ``agent_config``
    is given: see :func:`agent_settings`). Cheap: call it before loading any model.
    """
    directory = Path(config.output_dir)
    config_path = directory / CONFIG_FILE
    if config.resume:
        if not config_path.is_file():
            raise TrainSetupError(f"{directory}: no run to resume (no {CONFIG_FILE})")
        try:
            saved = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TrainSetupError(f"{config_path}: cannot read the run's settings ({exc})") from None
        changed = _changed_settings(saved, run_settings(config, agent_config), agent_config is not None)
        if changed:
            raise TrainSetupError(f"{directory}: cannot resume with changed settings: {', '.join(changed)}")
    elif config_path.exists() or (directory / LOG_FILE).exists():
        raise TrainSetupError(f"{directory} already holds a run; pass --resume to continue it, or another --output-dir")
    elif directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise TrainSetupError(
            f"{directory} is not empty and holds no seal-env run: a new run needs a new or empty --output-dir"
        )
    try:  # fail now, not after minutes of loading models
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise TrainSetupError(f"{directory}: the output folder is not writable ({exc.strerror or exc})") from None


def _changed_settings(saved: dict[str, Any], current: dict[str, Any], compare_agent: bool) -> list[str]:
    """The settings of a resumed run that differ from the saved ones, by name."""
    saved, current = dict(saved), dict(current)
    if compare_agent:  # name the agent's settings that differ, not just "agent_config"
        for settings in (saved, current):
            settings.update({f"agent_config.{k}": v for k, v in (settings.pop("agent_config", None) or {}).items()})
    else:
        saved.pop("agent_config", None)
        current.pop("agent_config", None)
    for settings in (saved, current):
        # The same keyword arguments however they were spelled, and the device actually used.
        settings["env_kwargs"] = json.loads(settings.get("env_kwargs") or "{}")
        settings["device"] = str(pick_device(settings.get("device")))
    ignored = ("resume", "output_dir")  # the folder may be named differently (a relative path, say)
    return sorted(k for k in set(saved) | set(current) if k not in ignored and saved.get(k) != current.get(k))


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
    # On CPU, several processes (torchrun / accelerate launch) only form a group when asked for CPU.
    state = PartialState(cpu=pick_device(config.device).type == "cpu")
    directory = Path(config.output_dir)
    settings = agent_settings(getattr(agent, "name", type(agent).__name__), getattr(agent, "config", None))
    if state.is_main_process:  # only it writes: the others would find its config.json and refuse
        check_run_folder(config, settings)
        if not config.resume:
            _write_atomic(directory / CONFIG_FILE, json.dumps(run_settings(config, settings), indent=2) + "\n")
    state.wait_for_everyone()
    log = RunLog(directory, state.process_index)
    if config.resume:
        log.read()
    base_env = env.unwrapped
    stepper = stepper or SequentialStepper(env)
    held_out, pool = split_contexts(len(base_env.contexts), config)
    outputs = _Outputs(directory, state.is_main_process)
    history = log.rounds  # the finished rounds' metrics; _finish_round appends

    def observe(indices: Sequence[int]) -> list[dict[str, Any]]:
        return [env.reset(options={"index": i})[0] for i in indices]

    def propose(round_index: int, phase: str, compute: Callable[[], list[list[str]]]) -> list[list[str]]:
        if (round_index, phase) in log.proposals:
            return log.proposals[(round_index, phase)]
        self_edits = [compute() if state.is_main_process else None]
        if state.num_processes > 1:
            broadcast_object_list(self_edits)
        if state.is_main_process:
            log.append("proposals", {"round": round_index, "phase": phase, "self_edits": self_edits[0]})
        log.proposals[(round_index, phase)] = self_edits[0]
        return self_edits[0]

    def step(round_index: int, phase: str, requests: Sequence[StepRequest], shard: bool) -> list[StepRecord]:
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
        size = stepper.batch_size
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
            for i, (reward, info) in zip(pending, stepper([requests[i] for i in pending])):
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

    def evaluate(round_index: int) -> list[StepRecord]:
        observations = observe(held_out)
        seed = derive_seed(config.seed, 0, EVAL)  # same seed every round: rounds differ only by the policy
        self_edits = propose(round_index, EVAL, lambda: agent.propose(observations, config.eval_samples, seed=seed))
        requests = [
            StepRequest(index, sample, obs["prompt"], text)
            for index, obs, texts in zip(held_out, observations, self_edits)
            for sample, text in enumerate(texts)
        ]
        return step(round_index, EVAL, requests, True)

    def sync_inner_model() -> None:
        if config.inner_model == "generator":
            agent.sync_inner_model(base_env.model)
            base_env.clear_baseline_cache()

    if history:
        agent.load(directory / CHECKPOINTS_DIR / f"round-{history[-1]['round']:03d}")
    for round_index in range(len(history), config.rounds + 1):
        start = time.perf_counter()
        sync_inner_model()
        metrics: dict[str, Any] = {"round": round_index}
        if round_index > 0:
            indices = round_contexts(pool, config, round_index)
            train_step = sum(m.get("agent/steps", 0) for m in history)
            learned = agent.train_round(
                Round(
                    round_index, indices, observe(indices), derive_seed(config.seed, round_index, TRAIN), step,
                    propose, logger=lambda values, s: outputs.scalars(values, train_step + s),
                )
            )
            if state.num_processes > 1:  # steps a trainer took in each process (GRPO) are only known there
                for record in gather_object(log.records(round_index, TRAIN)):
                    log.steps[record.key] = record
            metrics.update(summarize(log.records(round_index, TRAIN), TRAIN))
            metrics.update({f"agent/{k}": v for k, v in learned.items()})
            sync_inner_model()
        metrics.update(summarize(evaluate(round_index), EVAL))
        metrics["minutes"] = (time.perf_counter() - start) / 60
        _finish_round(agent, log, directory, metrics, state)
        outputs.round_finished(history)
    if state.is_main_process:
        _save_atomic(agent, directory / GENERATOR_DIR)
    state.wait_for_everyone()
    outputs.close()
    return history


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
