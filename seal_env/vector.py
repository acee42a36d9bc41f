"""A Gymnasium vector environment whose ``step`` trains and evaluates K self-edits together.

:class:`SelfAdaptVectorEnv` holds K copies of one :class:`~seal_env.env.SelfAdaptEnv` subclass that
share the inner model. ``step(actions)`` takes one self-edit per sub-environment, trains all their
LoRA updates in shared passes (:func:`seal_env.multi_lora.adapted_many`) and evaluates the adapted
models together (the task's :meth:`~seal_env.env.SelfAdaptEnv.evaluate_batch`). Rewards, scores and
``info`` are those K single-environment steps would give with the same seeds (up to floating-point
rounding in the scores; ``tests/test_vector.py``).

Construction::

    import gymnasium as gym
    import seal_env

    envs = gym.make_vec("seal_env/KnowledgeIncorporation-v0", num_envs=8)            # batched
    envs = gym.make_vec("seal_env/KnowledgeIncorporation-v0", num_envs=8,
                        vectorization_mode="sync")                                   # one by one
    envs = SelfAdaptVectorEnv(KnowledgeIncorporationEnv, 8, passages=my_passages)   # directly

``SelfAdaptVectorEnv(env, num_envs=1, *, autoreset_mode=AutoresetMode.NEXT_STEP, copy=True,
max_batch_tokens=None, progress=False, **env_kwargs)``:

* ``env`` – a :class:`~seal_env.env.SelfAdaptEnv` subclass or a registered id such as
  ``"seal_env/FewShotARC-v0"``; every sub-environment is ``env(**env_kwargs)`` (``passages=``,
  ``model=``, ``inner_loop=``, ``reward_metric=``, ...). Through ``gym.make_vec`` the same keywords
  are passed as ``make_vec(id, num_envs=K, **kwargs)``.
* ``autoreset_mode``, ``copy`` – as for Gymnasium's ``SyncVectorEnv`` (this class is one: reset,
  seeding, ``reset_mask``, autoreset and ``info`` batching are inherited unchanged).
* ``max_batch_tokens`` – tokens packed into one joint training pass (see
  :func:`~seal_env.multi_lora.adapted_many`); ``progress`` shows a bar over training steps.

Spaces and data: actions are a tuple of K ``str``; observations ``{"prompt": (K str),
"context": (K str)}``; ``info`` holds one array of K values per key of the single-env ``info``.
Seeding as in ``SyncVectorEnv``: ``reset(seed=s)`` seeds sub-environment i with ``s + i``.
``reset(options={"index": i})`` puts every sub-environment on context ``i`` (K self-edits for one
context, as GRPO wants); ``options={"indices": [i_0, ..., i_K-1]}`` gives each its own. Episodes
are one step long, so with the default ``NEXT_STEP`` autoreset the step after a terminal step only
resets; agents that choose contexts call ``reset()`` before every ``step()``.

``info["train_seconds"]`` / ``info["eval_seconds"]`` are the wall time of the joint update until that
self-edit's adapter finished / of the joint evaluation. Self-edits whose LoRA settings differ in rank,
target modules or dropout train in separate joint passes (one per setting); a task whose class
overrides ``step`` is stepped one sub-environment after another (plain ``SyncVectorEnv``).
"""

from __future__ import annotations

import time
from copy import deepcopy
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import concatenate, iterate

from seal_env.env import Evaluation, Seconds, SelfAdaptEnv
from seal_env.multi_lora import adapted_many, lora_structure


def _env_class(env: type[SelfAdaptEnv] | str) -> type[SelfAdaptEnv]:
    if isinstance(env, str):
        env = gym.envs.registration.load_env_creator(gym.spec(env).entry_point)
    if not (isinstance(env, type) and issubclass(env, SelfAdaptEnv)):
        raise TypeError(f"SelfAdaptVectorEnv needs a SelfAdaptEnv subclass or its registered id, got {env!r}")
    return env


class SelfAdaptVectorEnv(SyncVectorEnv):
    """K sub-environments of one :class:`~seal_env.env.SelfAdaptEnv` class, stepped together
    through :mod:`seal_env.multi_lora`. See the module docstring for the constructor."""

    def __init__(
        self,
        env: type[SelfAdaptEnv] | str,
        num_envs: int = 1,
        *,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        copy: bool = True,
        max_batch_tokens: int | None = None,
        progress: bool = False,
        **env_kwargs: Any,
    ):
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        env_class = _env_class(env)
        super().__init__([lambda: env_class(**env_kwargs)] * num_envs, copy=copy, autoreset_mode=autoreset_mode)
        first = self.envs[0]
        for sub in self.envs[1:]:
            if sub.model is not first.model:
                raise ValueError("the sub-environments must share one inner model (pass model=(model, tokenizer))")
            # Identical sub-environments have identical baselines: compute each context's once.
            sub._baselines = first._baselines
        self.max_batch_tokens = max_batch_tokens
        self.progress = progress
        # A task that redefines step() may do more than the parts batched here: step it as it is.
        self.batched = env_class.step is SelfAdaptEnv.step and env_class._adapt_and_evaluate is SelfAdaptEnv._adapt_and_evaluate

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        """As ``SyncVectorEnv.reset``; ``options={"indices": [...]}`` picks one context per sub-env."""
        options = dict(options or {})
        if "indices" not in options:
            return super().reset(seed=seed, options=options)
        indices = options.pop("indices")
        if len(indices) != self.num_envs or "reset_mask" in options:
            raise ValueError(f"options['indices'] needs {self.num_envs} context indices (and no reset_mask)")
        seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else seed
        if seeds is not None and len(seeds) != self.num_envs:
            raise ValueError(f"seed list must have {self.num_envs} entries, got {len(seeds)}")
        observations, infos = [], {}
        for i, (sub, index) in enumerate(zip(self.envs, indices)):
            obs, info = sub.reset(seed=None if seeds is None else seeds[i], options={**options, "index": index})
            observations.append(obs)
            infos = self._add_info(infos, info, i)
        self._env_obs = observations
        self._terminations[:] = self._truncations[:] = self._autoreset_envs[:] = False
        self._observations = concatenate(self.single_observation_space, observations, self._observations)
        return (self._copy(self._observations), infos)

    def step(self, actions: Sequence[str]):
        """One self-edit per sub-environment; returns batched ``(obs, rewards, terminations,
        truncations, infos)`` with the same autoreset behaviour as ``SyncVectorEnv``."""
        actions = list(iterate(self.action_space, actions))
        resetting = self.autoreset_mode == AutoresetMode.NEXT_STEP
        stepping = [i for i in range(self.num_envs) if not (resetting and self._autoreset_envs[i])]
        if self.batched:
            results = self._step_together(stepping, actions)
        else:
            results = {i: self.envs[i].step(actions[i]) for i in stepping}
        infos: dict[str, Any] = {}
        for i, sub in enumerate(self.envs):
            if i not in results:  # NEXT_STEP: this sub-env finished last step; reset it instead
                self._env_obs[i], info = sub.reset()
                self._rewards[i], self._terminations[i], self._truncations[i] = 0.0, False, False
            else:
                self._env_obs[i], self._rewards[i], self._terminations[i], self._truncations[i], info = results[i]
                if self.autoreset_mode == AutoresetMode.SAME_STEP and (self._terminations[i] or self._truncations[i]):
                    infos = self._add_info(infos, {"final_obs": self._env_obs[i], "final_info": info}, i)
                    self._env_obs[i], info = sub.reset()
            infos = self._add_info(infos, info, i)
        self._observations = concatenate(self.single_observation_space, self._env_obs, self._observations)
        self._autoreset_envs = np.logical_or(self._terminations, self._truncations)
        return (
            self._copy(self._observations),
            np.copy(self._rewards),
            np.copy(self._terminations),
            np.copy(self._truncations),
            infos,
        )

    def _copy(self, observations: Any) -> Any:
        return deepcopy(observations) if self.copy else observations

    def _step_together(self, stepping: list[int], actions: list[str]) -> dict[int, tuple]:
        """The single-env step of each sub-env in ``stepping``, with training and evaluation batched."""
        begun = {i: self.envs[i].begin_step(actions[i]) for i in stepping}
        evaluations: dict[int, Evaluation] = {}
        groups: dict[tuple, list[int]] = {}
        for i, (_, plan) in begun.items():
            if plan is not None:
                groups.setdefault(lora_structure(plan.config), []).append(i)
        first = self.envs[0]
        for group in groups.values():
            with adapted_many(
                first.model, first.tokenizer, [begun[i][1] for i in group], max_batch_tokens=self.max_batch_tokens,
                progress=self.progress,
            ) as run:
                trained = [
                    (adapter, i)
                    for adapter, (i, result) in enumerate(zip(group, run.results))
                    if self.envs[i].record_training(result, begun[i][0])
                ]
                if not trained:
                    continue
                adapter_of = [adapter for adapter, _ in trained]

                def route(owners: int | Sequence[int]):
                    return run.route(adapter_of[owners] if isinstance(owners, int) else [adapter_of[o] for o in owners])

                start = time.perf_counter()
                contexts = [first.contexts[begun[i][0]["context_index"]] for _, i in trained]
                with torch.no_grad():
                    batch = first.evaluate_batch(run.model, contexts, route)
                seconds = Seconds(time.perf_counter() - start)
                for (_, i), evaluation in zip(trained, batch):
                    evaluations[i] = evaluation
                    begun[i][0]["eval_seconds"] = seconds
        return {i: self.envs[i].end_step(begun[i][0], evaluations.get(i)) for i in stepping}


def knowledge_incorporation(num_envs: int = 1, **kwargs: Any) -> SelfAdaptVectorEnv:
    """``gym.make_vec("seal_env/KnowledgeIncorporation-v0", num_envs, **kwargs)`` (vector entry point)."""
    return SelfAdaptVectorEnv("seal_env/KnowledgeIncorporation-v0", num_envs, **kwargs)


def few_shot_arc(num_envs: int = 1, **kwargs: Any) -> SelfAdaptVectorEnv:
    """``gym.make_vec("seal_env/FewShotARC-v0", num_envs, **kwargs)`` (vector entry point)."""
    return SelfAdaptVectorEnv("seal_env/FewShotARC-v0", num_envs, **kwargs)
