"""Stepping an environment on many self-edits: the one place that knows how.

A *stepper* is called with :class:`~agents.base.StepRequest` objects and yields ``(reward, info)`` for
each, in order, as results complete (so that the runner logs every result at once). Its
``batch_size`` is how many requests it steps together: the runner hands it the requests in fixed
chunks of that size (by position), so that a resumed run batches its steps exactly as an
uninterrupted one did.

* :class:`SequentialStepper` resets one environment to each request's context and steps it.
* :class:`VectorStepper` steps ``num_envs`` self-edits at once through the batched vector environment
  (:class:`seal_env.vector.SelfAdaptVectorEnv`: the LoRA updates are trained in shared passes and
  the adapted models evaluated together).

:class:`RayStepper` spreads the chunks over Ray actors, each holding its own inner model and
  stepper on its own device (the ``ray`` extra: ``pip install "seal-env[ray]"``).

:func:`make_env` builds the environment and the fastest stepper available for it.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Protocol, Sequence

import gymnasium as gym
import numpy as np

from agents.base import StepRequest
from seal_env.vector import SelfAdaptVectorEnv


class Stepper(Protocol):
    batch_size: int

    def __call__(self, requests: Sequence[StepRequest]) -> Iterator[tuple[float, dict[str, Any]]]: ...


class SequentialStepper:
    """Step one environment on one self-edit after another (reset to the request's context first)."""

    batch_size = 1

    def __init__(self, env: gym.Env):
        self.env = env

    def __call__(self, requests: Sequence[StepRequest]) -> Iterator[tuple[float, dict[str, Any]]]:
        for request in requests:
            self.env.reset(options={"index": request.context_index})
            _, reward, _, _, info = self.env.step(request.self_edit)
            yield float(reward), info


class VectorStepper:
    """Step ``vector_env.num_envs`` self-edits together; a shorter chunk goes one by one through the
    environment that the vector env's slots step (the same model and baselines)."""

    def __init__(self, vector_env: SelfAdaptVectorEnv):
        self.vector_env = vector_env
        self.batch_size = vector_env.num_envs
        self.single = SequentialStepper(vector_env.env)

    def __call__(self, requests: Sequence[StepRequest]) -> Iterator[tuple[float, dict[str, Any]]]:
        if len(requests) != self.batch_size:
            yield from self.single(requests)
            return
        self.vector_env.reset(options={"indices": [r.context_index for r in requests]})
        _, rewards, _, _, infos = self.vector_env.step(tuple(r.self_edit for r in requests))
        for k in range(self.batch_size):
            yield float(rewards[k]), unbatch_info(infos, k)


def unbatch_info(infos: dict[str, Any], k: int) -> dict[str, Any]:
    """Sub-environment ``k``'s ``info`` from a Gymnasium vector env's batched ``info`` (arrays per key,
    ``"_key"`` masks marking which sub-environments have the key; nested dicts batched alike)."""
    info = {}
    for key, value in infos.items():
        if key.startswith("_") or ("_" + key in infos and not infos["_" + key][k]):
            continue
        info[key] = unbatch_info(value, k) if isinstance(value, dict) else value[k]
        if isinstance(info[key], np.generic):
            info[key] = info[key].item()
    return info


def make_env(env_id: str, num_envs: int = 1, **env_kwargs: Any) -> tuple[gym.Env, Stepper]:
    """``(env, stepper)`` for a registered environment: with ``num_envs > 1`` and a batched vector
    environment registered for ``env_id`` (``gym.make_vec``), ``env`` is its first sub-environment
    and the stepper steps ``num_envs`` self-edits at once; otherwise ``gym.make`` and one by one."""
    if num_envs > 1 and gym.spec(env_id).vector_entry_point is not None:
        vector_env = gym.make_vec(env_id, num_envs=num_envs, **env_kwargs).unwrapped
        if isinstance(vector_env, SelfAdaptVectorEnv) and vector_env.batched:
            return vector_env.env, VectorStepper(vector_env)
        vector_env.close()
    env = gym.make(env_id, **env_kwargs)
    return env, SequentialStepper(env)


class StepWorker:
    """What each :class:`RayStepper` actor holds: its own environment (its own inner model, loaded in
    the actor's process on the device Ray gave it) and the fastest stepper for it."""

    def __init__(self, env_id: str, num_envs: int, env_kwargs: dict[str, Any]):
        import seal_env  # noqa: F401  (registers the environments in the actor's process)

        self.env, self.stepper = make_env(env_id, num_envs, **env_kwargs)

    def step(self, requests: Sequence[StepRequest]) -> list[tuple[float, dict[str, Any]]]:
        return list(self.stepper(requests))

    def pid(self) -> int:
        """The actor's process id (to watch or kill it)."""
        return os.getpid()


class RayStepper:
    """Step requests on ``num_workers`` Ray actors (:class:`StepWorker`), ``num_envs`` at a time each.

    A chunk of ``batch_size = num_workers * num_envs`` requests is cut, by position, into sub-chunks
    of ``num_envs``, handed to the actors in turn; results come back in request order. Each actor
    steps its sub-chunk exactly as a local :class:`VectorStepper` (or :class:`SequentialStepper` when
    ``num_envs == 1``) would, so rewards and ``info`` are those of local stepping.

    Each actor reserves one CPU and, when the cluster has GPUs, one GPU (its inner model is placed
    there); ``resources`` overrides the reservation, e.g. ``{"num_gpus": 0.25}`` to pack four actors
    on a GPU, or ``{"num_cpus": 4}``. When an actor's process dies, Ray restarts it (at most
    ``max_restarts`` times over the stepper's life) and retries its pending sub-chunks there (the steps
    are deterministic, so a retry returns what the first try would have); past that, the call raises
    :class:`WorkerLostError` naming the requests, after the results before them were yielded (the
    runner has logged them, and ``--resume`` steps the rest).

    ``address`` is passed to ``ray.init`` unless Ray is already initialised: ``"local"`` (or None)
    starts a local cluster, ``"auto"`` or ``"ray://host:10001"`` joins one.
    """

    def __init__(
        self,
        env_id: str,
        num_workers: int,
        *,
        env_kwargs: dict[str, Any] | None = None,
        num_envs: int = 1,
        resources: dict[str, float] | None = None,
        address: str | None = None,
        max_restarts: int = 3,
    ):
        if num_workers < 1 or num_envs < 1:
            raise ValueError(f"num_workers and num_envs must be >= 1, got {num_workers} and {num_envs}")
        try:
            import ray
        except ImportError:
            raise ImportError('RayStepper needs Ray: pip install "seal-env[ray]"') from None
        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=None if address in (None, "local") else address, include_dashboard=False)
        reservation = {"num_cpus": 1, "num_gpus": 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0}
        reservation.update(resources or {})
        actor_class = ray.remote(max_restarts=max_restarts, max_task_retries=max_restarts)(StepWorker)
        self.num_workers, self.num_envs = num_workers, num_envs
        self.batch_size = num_workers * num_envs
        self.workers = [
            actor_class.options(**reservation).remote(env_id, num_envs, dict(env_kwargs or {}))
            for _ in range(num_workers)
        ]

    def __call__(self, requests: Sequence[StepRequest]) -> Iterator[tuple[float, dict[str, Any]]]:
        ray = self._ray
        chunks = [list(requests[i : i + self.num_envs]) for i in range(0, len(requests), self.num_envs)]
        futures = [self.workers[k % self.num_workers].step.remote(chunk) for k, chunk in enumerate(chunks)]
        for chunk, future in zip(chunks, futures):
            try:
                results = ray.get(future)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                names = ", ".join(f"(context {r.context_index}, sample {r.sample})" for r in chunk)
                raise WorkerLostError(
                    f"the Ray worker stepping {names} died and could not be restarted ({type(exc).__name__}); "
                    "the results before them are logged: rerun with --resume to step the rest"
                ) from exc
            yield from results

    def worker_pids(self) -> list[int]:
        """The process id of each actor."""
        return self._ray.get([worker.pid.remote() for worker in self.workers])

    def close(self) -> None:
        """Stop the actors (the cluster stays up)."""
        for worker in self.workers:
            self._ray.kill(worker)
        self.workers = []

    def __enter__(self) -> "RayStepper":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class WorkerLostError(RuntimeError):
    """A :class:`RayStepper` actor died and its requests could not be stepped elsewhere."""
