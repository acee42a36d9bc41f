"""A Gymnasium vector environment whose ``step`` trains and evaluates K self-edits together.

:class:`SelfAdaptVectorEnv` is a ``gymnasium.vector.VectorEnv`` of K slots over one
:class:`~seal_env.env.SelfAdaptEnv`. ``step(actions)`` takes one self-edit per slot and hands them
to the environment's own :meth:`~seal_env.env.SelfAdaptEnv.run_steps`, which trains all their LoRA
updates in shared passes (:func:`seal_env.multi_lora.adapted_many`) and evaluates the adapted models
together (the task's :meth:`~seal_env.env.SelfAdaptEnv.evaluate_batch`): the same method that a
single ``step()`` calls, so both paths define reward and ``info`` in one place. Rewards, scores and
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
  ``"seal_env/FewShotARC-v0"``; the environment is ``env(**env_kwargs)`` (``passages=``,
  ``model=``, ``inner_loop=``, ``reward_metric=``, ...). Through ``gym.make_vec`` the same keywords
  are passed as ``make_vec(id, num_envs=K, **kwargs)``.
* ``autoreset_mode``, ``copy`` – as for Gymnasium's ``SyncVectorEnv``, whose reset, seeding,
  ``reset_mask``, autoreset and ``info`` batching this class follows (``tests/test_vector.py``).
* ``max_batch_tokens`` – tokens packed into one joint training pass (see
  :func:`~seal_env.multi_lora.adapted_many`); ``progress`` shows a bar over training steps.

Spaces and data: actions are a tuple of K ``str``; observations ``{"prompt": (K str),
"context": (K str)}``; ``info`` holds one array of K values per key of the single-env ``info``.
Seeding as in ``SyncVectorEnv``: ``reset(seed=s)`` seeds slot i with ``s + i``.
``reset(options={"index": i})`` puts every slot on context ``i`` (K self-edits for one
context, as GRPO wants); ``options={"indices": [i_0, ..., i_K-1]}`` gives each its own. Episodes
are one step long, so with the default ``NEXT_STEP`` autoreset the step after a terminal step only
resets; agents that choose contexts call ``reset()`` before every ``step()``.

``info["train_seconds"]`` / ``info["eval_seconds"]`` are the wall time of the joint update until that
self-edit's adapter finished / of the joint evaluation. Self-edits whose LoRA settings differ in rank,
target modules or dropout train in separate joint passes (one per setting); a task whose class
overrides ``step`` is stepped one slot after another through that ``step``.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from seal_env.env import SelfAdaptEnv, context_index


def _env_class(env: type[SelfAdaptEnv] | str) -> type[SelfAdaptEnv]:
    if isinstance(env, str):
        env = gym.envs.registration.load_env_creator(gym.spec(env).entry_point)
    if not (isinstance(env, type) and issubclass(env, SelfAdaptEnv)):
        raise TypeError(f"SelfAdaptVectorEnv needs a SelfAdaptEnv subclass or its registered id, got {env!r}")
    return env


class SelfAdaptVectorEnv(VectorEnv):
    """K slots over one :class:`~seal_env.env.SelfAdaptEnv`, stepped together through
    :mod:`seal_env.multi_lora`. See the module docstring for the constructor.

    One environment serves every slot (the slots differ only in their context and random state), so
    the inner model and the baselines are shared by construction. Each slot keeps its own context
    index, random generator and autoreset flag here.
    """

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
        self.env = _env_class(env)(**env_kwargs)
        """The environment every slot steps (its model, contexts and baselines)."""
        self.num_envs = num_envs
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.metadata = {"autoreset_mode": self.autoreset_mode}
        self.render_mode = None
        self.copy = copy
        self.max_batch_tokens = max_batch_tokens
        self.progress = progress
        self.batched = self.env.batched_steps_available
        self.single_observation_space = self.env.observation_space
        self.single_action_space = self.env.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._indices: list[int | None] = [None] * num_envs
        self._rngs = [seeding.np_random()[0] for _ in range(num_envs)]
        self._finished = np.zeros(num_envs, dtype=bool)  # the slot's episode ended at the last step
        self._slot_observations: list[dict[str, str] | None] = [None] * num_envs
        self._observations = create_empty_array(self.single_observation_space, n=num_envs)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        """Reset every slot (or those in ``options["reset_mask"]``), as ``SyncVectorEnv.reset`` does.

        ``seed=s`` seeds slot i with ``s + i`` (a list gives one seed per slot); ``options={"index": i}``
        puts every slot on context ``i``; ``options={"indices": [...]}`` gives each its own.
        """
        options = dict(options or {})
        seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else seed
        if seeds is None:
            seeds = [None] * self.num_envs
        if len(seeds) != self.num_envs:
            raise ValueError(f"seed list must have {self.num_envs} entries, got {len(seeds)}")
        mask = np.asarray(options.pop("reset_mask", np.ones(self.num_envs, dtype=bool)), dtype=bool)
        if "indices" in options:
            indices = list(options.pop("indices"))
            if len(indices) != self.num_envs or not mask.all():
                raise ValueError(f"options['indices'] needs {self.num_envs} context indices (and no reset_mask)")
        else:
            indices = [options.get("index")] * self.num_envs
        infos: dict[str, Any] = {}
        for slot in np.flatnonzero(mask):
            infos = self._add_info(infos, self._reset_slot(int(slot), seeds[slot], indices[slot]), int(slot))
        return self._batched_observations(), infos

    def step(self, actions: Sequence[str]):
        """One self-edit per slot; returns batched ``(obs, rewards, terminations, truncations, infos)``
        with Gymnasium's autoreset behaviour (``NEXT_STEP``: a slot that finished at the last step is
        only reset, its action ignored; ``SAME_STEP``: it is reset at once, its result in
        ``final_obs`` / ``final_info``)."""
        actions = list(iterate(self.action_space, actions))
        if any(index is None for index in self._indices):
            raise RuntimeError("call reset() before step()")
        resetting = self.autoreset_mode == AutoresetMode.NEXT_STEP
        stepping = [i for i in range(self.num_envs) if not (resetting and self._finished[i])]
        results = self._step_slots(stepping, actions)
        rewards = np.zeros(self.num_envs)
        terminations = np.zeros(self.num_envs, dtype=bool)
        truncations = np.zeros(self.num_envs, dtype=bool)
        infos: dict[str, Any] = {}
        for slot in range(self.num_envs):
            if slot not in results:  # NEXT_STEP: reset instead of stepping
                info = self._reset_slot(slot, None, None)
            else:
                rewards[slot], info = results[slot]
                terminations[slot] = True
                if self.autoreset_mode == AutoresetMode.SAME_STEP:
                    infos = self._add_info(infos, {"final_obs": self._slot_observations[slot], "final_info": info}, slot)
                    info = self._reset_slot(slot, None, None)
            infos = self._add_info(infos, info, slot)
        self._finished = terminations | truncations
        return self._batched_observations(), rewards, terminations, truncations, infos

    def _step_slots(self, slots: list[int], actions: list[str]) -> dict[int, tuple[float, dict[str, Any]]]:
        if self.batched:
            prepared = [self.env.prepare_step(actions[i], self._indices[i]) for i in slots]
            results = self.env.run_steps(prepared, batched=True, max_batch_tokens=self.max_batch_tokens, progress=self.progress)
            return {i: (r.reward, r.info) for i, r in zip(slots, results)}
        stepped = {}
        for i in slots:
            self.env.reset(options={"index": self._indices[i]})
            _, reward, _, _, info = self.env.step(actions[i])
            stepped[i] = (reward, info)
        return stepped

    def _add_info(self, vector_infos: dict[str, Any], env_info: dict[str, Any], env_num: int) -> dict[str, Any]:
        """Gymnasium's batching of ``info``, keeping ``None`` (an unmeasured value, e.g. the score of an
        unusable self-edit): Gymnasium makes a key's array of the first slot's type, and numpy would
        store a later slot's ``None`` in a float array as NaN (or refuse it in an int array)."""
        for key, value in env_info.items():
            array = vector_infos.get(key)
            if value is None and isinstance(array, np.ndarray) and array.dtype != object:
                vector_infos[key] = array.astype(object)
        return super()._add_info(vector_infos, env_info, env_num)

    def _reset_slot(self, slot: int, seed: int | None, index: Any) -> dict[str, Any]:
        if seed is not None:
            self._rngs[slot] = seeding.np_random(seed)[0]
        n = len(self.env.contexts)
        self._indices[slot] = self.env.draw_context(self._rngs[slot]) if index is None else context_index(index, n)
        self._slot_observations[slot] = self.env.observation(self._indices[slot])
        self._finished[slot] = False
        return {"context_index": self._indices[slot]}

    def _batched_observations(self) -> Any:
        self._observations = concatenate(self.single_observation_space, self._slot_observations, self._observations)
        return deepcopy(self._observations) if self.copy else self._observations

    def close_extras(self, **kwargs: Any) -> None:
        self.env.close()


def knowledge_incorporation(num_envs: int = 1, **kwargs: Any) -> SelfAdaptVectorEnv:
    """``gym.make_vec("seal_env/KnowledgeIncorporation-v0", num_envs, **kwargs)`` (vector entry point)."""
    return SelfAdaptVectorEnv("seal_env/KnowledgeIncorporation-v0", num_envs, **kwargs)


def few_shot_arc(num_envs: int = 1, **kwargs: Any) -> SelfAdaptVectorEnv:
    """``gym.make_vec("seal_env/FewShotARC-v0", num_envs, **kwargs)`` (vector entry point)."""
    return SelfAdaptVectorEnv("seal_env/FewShotARC-v0", num_envs, **kwargs)
