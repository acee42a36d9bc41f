"""``RemoteEnv``: a Gymnasium environment that steps a ``seal-env serve`` server, through
openenv-core's WebSocket ``EnvClient``."""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlsplit

import gymnasium as gym
from openenv.core.client_types import StepResult
from openenv.core.env_client import EnvClient
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from seal_env.env import context_index
from seal_env.serve.messages import SelfAdaptState, SelfEditAction, SelfEditObservation, space_from_description
from seal_env.spaces import Seconds


def _is_local(url: str) -> bool:
    return (urlsplit(url if "://" in url else f"ws://{url}").hostname or "") in ("localhost", "127.0.0.1", "::1")


class SelfAdaptClient(EnvClient[SelfEditAction, SelfEditObservation, SelfAdaptState]):
    """openenv-core's async WebSocket client for a ``seal-env serve`` server (``.sync()`` for a
    blocking one), with an optional bearer token."""

    def __init__(self, base_url: str, token: str | None = None, **kwargs: Any):
        super().__init__(base_url, **kwargs)
        self._token = token

    async def connect(self) -> SelfAdaptClient:
        # EnvClient.connect cannot send headers; this is the same connection with the Authorization
        # header (and, like EnvClient, no HTTP proxy for a local server).
        if self._ws is not None:
            return self
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        try:
            self._ws = await ws_connect(self._ws_url, additional_headers=headers, open_timeout=self._connect_timeout,
                                        max_size=self._max_message_size, proxy=None if _is_local(self._ws_url) else True)
        except Exception as exc:
            raise ConnectionError(f"Failed to connect to {self._ws_url}: {exc}") from exc
        return self

    def _step_payload(self, action: SelfEditAction) -> dict[str, Any]:
        return action.model_dump()

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[SelfEditObservation]:
        observation = SelfEditObservation(**payload.get("observation", {}), reward=payload.get("reward"),
                                          done=payload.get("done", False))
        return StepResult(observation=observation, reward=observation.reward, done=observation.done)

    def _parse_state(self, payload: dict[str, Any]) -> SelfAdaptState:
        return SelfAdaptState(**payload)


class RemoteEnv(gym.Env[dict, str]):
    """A Gymnasium environment that steps an environment served by ``seal-env serve``.

    Args:
        url: the server, e.g. ``"http://127.0.0.1:8000"`` (``ws://`` works too).
        token: the server's bearer token, if it has one.
        timeout_s: how long to wait for one reply (a step waits for the steps of other sessions
            before it: they share one model); ``None`` waits for ever.
        connect_timeout_s: how long to wait for the connection.

    One ``RemoteEnv`` is one server session (a WebSocket connection) with its own episode state;
    the spaces, ``num_contexts`` and the ``reset``/``step`` results are those of the served
    environment. Raises ``ConnectionError`` when the server cannot be reached or refuses the token.
    """

    metadata = {"render_modes": []}

    def __init__(self, url: str, token: str | None = None, *, timeout_s: float | None = 3600.0,
                 connect_timeout_s: float = 10.0):
        self.url = url
        self._client = SelfAdaptClient(url, token=token, connect_timeout_s=connect_timeout_s,
                                       message_timeout_s=timeout_s).sync()
        try:
            self._client.connect()
            state = self._request(self._client.state)
        except BaseException:
            self._client.close()
            raise
        self._closed = False
        self.env_id = state.env_id
        self._num_contexts = state.num_contexts
        self.action_space = space_from_description(state.action_space)
        self.observation_space = space_from_description(state.observation_space)

    @property
    def num_contexts(self) -> int:
        """How many contexts the served environment has (``options["index"]`` ranges over them)."""
        return self._num_contexts

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Start an episode on ``options["index"]``, else on a context the server's session draws
        with its generator (seeded by ``seed`` exactly as the local environment's ``np_random``)."""
        super().reset(seed=seed)
        options = options or {}
        data: dict[str, Any] = {}
        if seed is not None:
            data["seed"] = int(seed)
        if "index" in options:  # checked here as the local env does: a ValueError, before any request
            data["options"] = {"index": context_index(options["index"], self.num_contexts)}
        observation = self._request(self._client.reset, **data).observation
        return {"prompt": observation.prompt, "context": observation.context}, self._info(observation)

    def step(self, action: str) -> tuple[dict, float, bool, bool, dict[str, Any]]:
        """Step the served environment on the self-edit ``action``. A bad self-edit gives reward
        0.0 and ``info["error"]`` as locally; only a non-``str`` (which JSON cannot carry as a
        self-edit) raises ``TypeError``."""
        if not isinstance(action, str):
            raise TypeError(f"a self-edit must be a str, got {type(action).__name__}")
        observation = self._request(self._client.step, SelfEditAction(self_edit=action)).observation
        obs = {"prompt": observation.prompt, "context": observation.context}
        return obs, float(observation.reward), observation.terminated, observation.truncated, self._info(observation)

    def _request(self, method: Callable, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except ConnectionClosed as exc:
            raise ConnectionError(f"the server at {self.url} closed the session ({exc})") from exc

    @staticmethod
    def _info(observation: SelfEditObservation) -> dict[str, Any]:
        info = dict(observation.info)
        for key in observation.wall_clock_keys:
            if info.get(key) is not None:
                info[key] = Seconds(info[key])
        return info

    def update_inner_model(self, write: Callable) -> None:
        """Not possible: the served environment's inner model lives in the server's process."""
        raise NotImplementedError(
            "RemoteEnv cannot take the generator's weights: the served environment's inner model lives in the "
            "server process (train with --inner-model base, or run the environment locally)"
        )

    def render(self) -> None:
        return None

    def close(self) -> None:
        """Close the session (the WebSocket connection) and the client's event-loop thread."""
        if not getattr(self, "_closed", True):
            self._closed = True
            self._client.close()
        super().close()
