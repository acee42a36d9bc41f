"""``seal-env train``: the options (built from the config dataclasses) and the job.

As in TRL, the configs are the command line: every field of :class:`agents.runner.TrainConfig`, of
the agents' configs (:class:`agents.rest_em.RestEMConfig`, :class:`agents.grpo.GRPOAgentConfig`) and
of the inner loop (:class:`seal_env.inner_loop.InnerLoopConfig`, as ``--inner-*``) becomes an option
whose help is the field's docstring. :func:`add_train_command` adds them as the ``train`` subcommand
of ``seal-env`` (registered in the ``seal_env.commands`` entry-point group, so that ``seal_env``
never imports ``agents``) and runs :func:`run_train`; ``python -m agents.cli`` works too.

Options are parsed with a default of ``None`` and only the given ones are passed to the configs, so
the defaults live in one place (the dataclasses) and an option of the other agent is an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym

from agents.generator import GeneratorConfig
from agents.held_out import held_out_rounds, learning_verdict
from agents.grpo import GRPOAgent, GRPOAgentConfig
from agents.rest_em import RestEMAgent, RestEMConfig
from agents.run_log import RunLog
from agents.runner import TrainConfig, TrainSetupError, agent_settings, check_run_folder, train
from agents.stepping import RayStepper, SequentialStepper, Stepper, WorkerLostError, make_env
from seal_env.config_cli import INNER_PREFIX, Option, add_option, dataclass_options

AGENTS: dict[str, tuple[type, type]] = {
    "rest-em": (RestEMAgent, RestEMConfig),
    "grpo": (GRPOAgent, GRPOAgentConfig),
}


def _defaults_note(defaults: dict[str, Any]) -> str:
    if len(set(map(repr, defaults.values()))) == 1:
        return f"default: {next(iter(defaults.values()))}"
    return "default: " + ", ".join(f"{v} ({agent})" for agent, v in defaults.items())


# ---------------------------------------------------------------------- seal-env train


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option of ``seal-env train`` to ``parser`` (built from the config dataclasses)."""
    job = parser.add_argument_group("training job")
    inner = parser.add_argument_group("inner loop (the LoRA update of each environment step)")
    for option in dataclass_options(TrainConfig):
        note = "" if option.default is None else f" (default: {option.default})"
        add_option(inner if option.nested else job, option, option.help + note)
    shared = {option.dest for option in dataclass_options(GeneratorConfig)}
    groups = {"": parser.add_argument_group("generator (both agents)")}
    defaults: dict[str, dict[str, Any]] = {}
    first: dict[str, tuple[Option, str]] = {}
    for agent, (_, config_cls) in AGENTS.items():
        for option in dataclass_options(config_cls):
            defaults.setdefault(option.dest, {})[agent] = option.default
            first.setdefault(option.dest, (option, "" if option.dest in shared else agent))
    for dest, (option, owner) in first.items():
        if owner not in groups:
            groups[owner] = parser.add_argument_group(f"{owner} (--agent {owner})")
        add_option(groups[owner], option, f"{option.help} ({_defaults_note(defaults[dest])})")


def configs_from_args(args: argparse.Namespace) -> tuple[TrainConfig, GeneratorConfig]:
    """The job's config and the chosen agent's config from parsed options (given options only).

    Raises ``ValueError`` for invalid values and for options of the other agent.
    """
    given = lambda dest: getattr(args, dest, None) is not None  # noqa: E731
    train_values: dict[str, Any] = {}
    inner_values: dict[str, Any] = {}
    for option in dataclass_options(TrainConfig):
        if given(option.dest):
            value = getattr(args, option.dest)
            if option.nested:
                inner_values[option.dest[len(INNER_PREFIX) :]] = value
            else:
                train_values[option.dest] = value
    if inner_values:
        train_values["inner_loop"] = replace(TrainConfig().inner_loop, **inner_values)
    config = TrainConfig(**train_values)
    _, config_cls = AGENTS[config.agent]
    own = {option.dest for option in dataclass_options(config_cls)}
    for agent, (_, other_cls) in AGENTS.items():
        for option in dataclass_options(other_cls):
            if option.dest not in own and given(option.dest):
                flag = "--" + option.dest.replace("_", "-")
                raise ValueError(f"{flag} is an option of --agent {agent}, not of --agent {config.agent}")
    agent_config = config_cls(**{dest: getattr(args, dest) for dest in own if given(dest)})
    return config, agent_config


def run_job(config: TrainConfig, agent_config: GeneratorConfig) -> list[dict[str, Any]]:
    """Load the generator and the environment named by ``config`` and train; the metrics per round."""
    import datasets

    import seal_env  # noqa: F401  (registers the environments)
    from seal_env.models import load_model, pick_device

    check_run_folder(config, agent_settings(config.agent, agent_config))  # before minutes of loading
    datasets.disable_progress_bars()  # the dataset preparation of every round would print several bars
    # Transformers 5 renamed gradient checkpointing; PEFT and TRL still ask for the old name.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    device = pick_device(config.device)
    generator_model, tokenizer = load_model(config.model, device=device, shared=False)
    # The inner model is the shared frozen copy, or a private one that each round overwrites with the generator.
    inner = None if config.env_url else load_model(config.model, device=device, shared=config.inner_model == "base")
    env, stepper = make_stepping(config, inner)
    agent_cls, _ = AGENTS[config.agent]
    agent = agent_cls(generator_model, tokenizer, agent_config, seed=config.seed)
    try:
        return train(agent, env, config, stepper=stepper)
    finally:
        if isinstance(stepper, RayStepper):
            stepper.close()


def make_stepping(config: TrainConfig, inner: Any) -> tuple[Any, Stepper]:
    """The environment the job observes and the stepper it steps with: local (batched when it can),
    on Ray actors (``ray_address``; the local env then only serves observations), or a served env."""
    env_kwargs = json.loads(config.env_kwargs)
    if config.env_url is not None:
        from seal_env.serve import TOKEN_ENV_VAR, RemoteEnv

        # The served env's settings are the server's; its token comes from the environment, as the
        # server's does, never from the command line (where `ps` shows it to every user).
        env = RemoteEnv(config.env_url, token=os.environ.get(TOKEN_ENV_VAR) or None)
        return env, SequentialStepper(env)
    if config.ray_address is None:
        return make_env(config.env, config.num_envs, model=inner, inner_loop=config.inner_loop, **env_kwargs)
    # Each actor loads its own inner model by name, on the device Ray gives it (unless --device says).
    worker_kwargs = dict(model=config.model, inner_loop=config.inner_loop, device=config.device, **env_kwargs)
    resources = None if config.ray_gpus_per_worker is None else {"num_gpus": config.ray_gpus_per_worker}
    stepper = RayStepper(config.env, config.ray_workers, env_kwargs=worker_kwargs, num_envs=config.num_envs,
                         resources=resources, address=config.ray_address)
    return gym.make(config.env, model=inner, inner_loop=config.inner_loop, **env_kwargs), stepper


def run_train(args: argparse.Namespace) -> int:
    """Run ``seal-env train`` with parsed options; the process exit code."""
    try:
        config, agent_config = configs_from_args(args)  # the configs' checks raise ValueError
    except ValueError as exc:
        return _usage_error(exc)
    try:
        run_job(config, agent_config)
    except TrainSetupError as exc:  # other errors inside training keep their traceback
        return _usage_error(exc)
    except WorkerLostError as exc:  # the run's log holds every result before it: --resume goes on
        print(f"seal-env train: error: {exc}", file=sys.stderr)
        return 1
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"done: {config.output_dir} (generator adapter in {config.output_dir}/generator)")
        log = RunLog(Path(config.output_dir))
        log.read(repair=False)
        print(learning_verdict(held_out_rounds(log)))
    return 0


def _usage_error(exc: Exception) -> int:
    print(f"seal-env train: error: {exc}", file=sys.stderr)
    return 2


def add_train_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``seal-env`` command (its ``seal_env.commands`` entry point)."""
    train = subparsers.add_parser(
        "train", help="train a self-edit generator with an RL agent (ReST-EM or GRPO)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_train_arguments(train)
    train.set_defaults(handler=run_train)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.cli", description="Train a self-edit generator.")
    add_train_arguments(parser)
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
