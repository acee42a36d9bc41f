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

:func:`make_env` builds the environment and the fastest stepper available for it.
"""

from __future__ import annotations

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
