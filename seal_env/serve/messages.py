"""The typed messages of ``seal-env serve`` (pydantic, subclasses of OpenEnv's ``Action``,
``Observation`` and ``State``), its request errors, the JSON form of spaces and of ``info``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces
from openenv.core.env_server.types import Action, Observation, State
from pydantic import Field

from seal_env.spaces import Seconds, UnicodeText


class SelfEditAction(Action):
    """One step's action: the self-edit text (any ``str``; the environment judges its content)."""

    self_edit: str = Field(description="the self-edit the environment trains a LoRA adapter on")


class SelfEditObservation(Observation):
    """What ``reset`` and ``step`` return: the Gymnasium observation, ``info`` and the episode flags.

    OpenEnv's ``done`` is ``terminated or truncated``; both are kept for Gymnasium. ``info`` is JSON
    (non-finite floats become ``None``); ``wall_clock_keys`` names its :class:`Seconds` fields.
    """

    prompt: str = Field(default="", description="obs['prompt']: what a generator continues to write a self-edit")
    context: str = Field(default="", description="obs['context']: the raw context as text")
    info: dict[str, Any] = Field(default_factory=dict, description="the Gymnasium info dict, as JSON")
    terminated: bool = Field(default=False, description="Gymnasium's terminated")
    truncated: bool = Field(default=False, description="Gymnasium's truncated")
    wall_clock_keys: list[str] = Field(default_factory=list, description="info keys holding wall-clock seconds")


class SelfAdaptState(State):
    """A session's state, with the description of the served environment (constant per server)."""

    env_id: str | None = Field(default=None, description="registered id of the served environment")
    context_index: int | None = Field(default=None, description="context of the current episode (None before reset)")
    num_contexts: int = Field(default=0, description="how many contexts options['index'] ranges over")
    action_space: dict[str, Any] = Field(default_factory=dict, description="the action space (describe_space)")
    observation_space: dict[str, Any] = Field(default_factory=dict, description="the observation space (describe_space)")


class ServeRequestError(ValueError):
    """A malformed request: answered with ``status_code`` over HTTP, an error message over /ws."""

    status_code = 400


class NoEpisodeError(ServeRequestError, RuntimeError):
    """``step`` before ``reset`` in this session."""

    status_code = 409


# ------------------------------------------------------------------------------------------ spaces
# Gymnasium has no JSON form of a space, so the two kinds a SelfAdaptEnv uses are written out here.


def describe_space(space: spaces.Space) -> dict[str, Any]:
    """A JSON description of ``space`` (:class:`UnicodeText` or a ``Dict`` of them) for the client."""
    if isinstance(space, UnicodeText):
        return {"type": "UnicodeText", "min_length": space.min_length, "max_length": space.max_length}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {key: describe_space(sub) for key, sub in space.spaces.items()}}
    raise TypeError(f"cannot describe a {type(space).__name__} space (UnicodeText and Dict only)")


def space_from_description(description: dict[str, Any]) -> spaces.Space:
    """The space :func:`describe_space` described."""
    kind = description.get("type")
    if kind == "UnicodeText":
        return UnicodeText(int(description["max_length"]), min_length=int(description["min_length"]))
    if kind == "Dict":
        return spaces.Dict({key: space_from_description(sub) for key, sub in description["spaces"].items()})
    raise ValueError(f"unknown space description {description!r}")


# ---------------------------------------------------------------------------------------- JSON info


def json_safe(value: Any) -> Any:
    """``value`` as JSON data: numpy scalars and arrays as numbers and lists, tuples as lists,
    non-finite floats as ``None`` (JSON has no NaN), keys as strings, unencodable strings (lone
    surrogates) with backslash escapes, anything else as its ``str``."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)  # an int subclass (an IntEnum, say) as a plain int
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return str(value)


def to_observation(obs: dict[str, str], info: dict[str, Any], **flags: Any) -> SelfEditObservation:
    """The message of a Gymnasium ``(obs, info)`` and the episode flags (``reward``, ``done``, ...)."""
    seconds = [key for key, value in info.items() if isinstance(value, Seconds)]
    return SelfEditObservation(prompt=obs["prompt"], context=obs["context"], info=json_safe(info),
                               wall_clock_keys=seconds, **flags)
