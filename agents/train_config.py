"""The training job's settings (:class:`TrainConfig`), its seeds and context split, and the checks
of its output folder (a new run, or a resumed one with the same settings)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from agents.base import EVAL, TRAIN
from seal_env.config_cli import json_object
from seal_env.inner_loop import InnerLoopConfig
from seal_env.models import pick_device

CONFIG_FILE = "config.json"
LOG_FILE = "steps.jsonl"


class TrainSetupError(ValueError):
    """The job cannot start as configured (output folder, resume, too few contexts)."""


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
    """Continue the interrupted run in output_dir from its log (same settings required; more rounds extend it)."""
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
    ray_address: str | None = None
    """Step on Ray actors: 'local' starts a local cluster, 'auto' or 'ray://HOST:10001' joins one (``seal-env[ray]``)."""
    ray_workers: int = 2
    """Ray actors stepping the environment (with ray_address), each with its own inner model and num_envs slots."""
    ray_gpus_per_worker: float | None = None
    """GPUs each Ray actor reserves (default: 1 when the cluster has GPUs, else 0; 0.25 packs four per GPU)."""
    env_url: str | None = None
    """Step an environment served by ``seal-env serve`` at this URL instead of a local one (``seal-env[serve]``).
    The server's settings (env kwargs, inner loop) apply; its token is read from $SEAL_ENV_TOKEN."""
    inner_loop: InnerLoopConfig = field(default_factory=InnerLoopConfig)
    """The LoRA update of each environment step: the environment's default, the one whose reward the
    reward-validity benchmark checked (README, "Reward validity"); a lighter one must pass it first."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("rounds", "contexts_per_round", "eval_contexts", "eval_samples", "num_envs", "ray_workers"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.inner_model not in ("base", "generator"):
            problems.append(f"inner_model must be 'base' or 'generator', got {self.inner_model!r}")
        try:
            kwargs = json_object(self.env_kwargs, "env_kwargs")
        except ValueError as exc:
            problems.append(str(exc))
        else:
            if {"model", "inner_loop"} & set(kwargs):
                problems.append("env_kwargs cannot set model or inner_loop: use --model and the --inner-* options")
            elif kwargs and self.env_url is not None:
                problems.append("env_kwargs are the server's settings with env_url: give them to seal-env serve")
        if self.ray_gpus_per_worker is not None and self.ray_gpus_per_worker < 0:
            problems.append(f"ray_gpus_per_worker must be >= 0, got {self.ray_gpus_per_worker}")
        if self.ray_address is not None and self.env_url is not None:
            problems.append("ray_address and env_url exclude each other: step on Ray workers or on a served env")
        if (self.ray_address is not None or self.env_url is not None) and self.inner_model == "generator":
            problems.append("inner_model 'generator' needs the environment in this process (no ray_address or env_url)")
        if isinstance(self.inner_loop, dict):
            self.inner_loop = InnerLoopConfig(**self.inner_loop)
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "inner_loop": self.inner_loop.to_dict()}


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
        # More rounds extend a run: a round's contexts and seeds depend on its index, not on the total
        # (round_contexts, derive_seed), so rounds 1..N are the same as in the shorter run.
        if config.rounds < saved.get("rounds", config.rounds):
            raise TrainSetupError(
                f"{directory}: the run has {saved['rounds']} rounds; --resume can extend it (--rounds "
                f"{saved['rounds']} or more), not shorten it"
            )
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
    # The folder may be named differently (a relative path, say); where the steps run does not change
    # their results (agents.stepping), so a run may resume on other workers or another server.
    ignored = ("resume", "output_dir", "ray_address", "ray_workers", "ray_gpus_per_worker", "env_url", "rounds")
    return sorted(k for k in set(saved) | set(current) if k not in ignored and saved.get(k) != current.get(k))
