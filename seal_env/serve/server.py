"""The ``seal-env serve`` server: OpenEnv's FastAPI app over sessions that share one environment,
the bearer-token check, and the command."""

from __future__ import annotations

import argparse
import functools
import hmac
import os
import signal
import sys
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from gymnasium.utils import seeding
from openenv.core.env_server.http_server import create_fastapi_app
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import EnvironmentMetadata
from starlette.websockets import WebSocket, WebSocketDisconnect

from seal_env import __version__
from seal_env.config_cli import json_object
from seal_env.env import SelfAdaptEnv, context_index
from seal_env.inner_loop import InnerLoopConfig
from seal_env.serve.messages import (
    NoEpisodeError,
    SelfAdaptState,
    SelfEditAction,
    SelfEditObservation,
    ServeRequestError,
    describe_space,
    to_observation,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_SESSIONS = 16
TOKEN_ENV_VAR = "SEAL_ENV_TOKEN"
"""Environment variable ``seal-env serve`` reads the token from when ``--token`` is not given (a
token on the command line is visible to every user of the machine in ``ps``)."""


@dataclass
class SharedEnv:
    """The one environment (and model) every session steps, and the lock that serialises them.

    ``env`` is a :class:`~seal_env.env.SelfAdaptEnv`, possibly wrapped (``gym.make`` output)."""

    env: gym.Env
    env_id: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not isinstance(self.env.unwrapped, SelfAdaptEnv):
            raise TypeError(f"seal_env.serve serves SelfAdaptEnv environments, got {type(self.env.unwrapped).__name__}")
        if self.env_id is None and self.env.spec is not None:
            self.env_id = self.env.spec.id
        self.action_space = describe_space(self.env.action_space)
        self.observation_space = describe_space(self.env.observation_space)

    @property
    def num_contexts(self) -> int:
        return self.env.unwrapped.num_contexts


class SelfAdaptSession(Environment[SelfEditAction, SelfEditObservation, SelfAdaptState]):
    """One client's episode over the :class:`SharedEnv` (OpenEnv makes one per WebSocket session).

    The session owns its random generator (seeded by ``reset(seed=...)`` as Gymnasium's
    ``Env.reset`` seeds ``np_random``) and its context index; the shared environment is reset to
    that index, then stepped, under the shared lock, so a step is exactly the local ``env.step``.
    """

    SUPPORTS_CONCURRENT_SESSIONS = True  # sessions share no episode state; the lock guards the model

    def __init__(self, shared: SharedEnv):
        super().__init__()
        self.shared = shared
        self._rng: np.random.Generator | None = None
        self._index: int | None = None
        self._episode_id: str | None = None
        self._step_count = 0

    def reset(self, seed: int | None = None, episode_id: str | None = None,
              options: dict[str, Any] | None = None, **kwargs: Any) -> SelfEditObservation:
        """Start an episode on ``options["index"]``, else on a context drawn from the session's generator."""
        if kwargs:
            raise ServeRequestError(f"unknown reset parameter(s) {sorted(kwargs)}; expected seed, episode_id, options")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ServeRequestError(f"seed must be a non-negative int or null, got {seed!r}")
        if options is not None and not isinstance(options, dict):
            raise ServeRequestError(f"options must be an object or null, got {options!r}")
        if episode_id is not None and not isinstance(episode_id, str):
            raise ServeRequestError(f"episode_id must be a string or null, got {episode_id!r}")
        if seed is not None or self._rng is None:
            self._rng, _ = seeding.np_random(seed)
        options = options or {}
        if "index" in options:
            try:
                index = context_index(options["index"], self.shared.num_contexts)
            except ValueError as exc:
                raise ServeRequestError(str(exc)) from None
        else:
            index = self.shared.env.unwrapped.draw_context(self._rng)
        with self.shared.lock:
            obs, info = self.shared.env.reset(options={"index": index})
        self._index, self._step_count = index, 0
        self._episode_id = episode_id or str(uuid.uuid4())
        return to_observation(obs, info)

    def step(self, action: SelfEditAction, timeout_s: float | None = None, **kwargs: Any) -> SelfEditObservation:
        """Step the shared environment on this session's context (``timeout_s`` is not supported:
        a LoRA update cannot be interrupted)."""
        if self._index is None:
            raise NoEpisodeError(
                "call reset before step (over HTTP, /reset and /step are stateless, one fresh session per "
                "request, as in OpenEnv: use the WebSocket /ws, as RemoteEnv does)"
            )
        with self.shared.lock:
            self.shared.env.reset(options={"index": self._index})
            obs, reward, terminated, truncated, info = self.shared.env.step(action.self_edit)
        self._step_count += 1
        return to_observation(obs, info, reward=float(reward), done=bool(terminated or truncated),
                            terminated=bool(terminated), truncated=bool(truncated))

    @property
    def state(self) -> SelfAdaptState:
        return SelfAdaptState(
            episode_id=self._episode_id, step_count=self._step_count, env_id=self.shared.env_id,
            context_index=self._index, num_contexts=self.shared.num_contexts,
            action_space=self.shared.action_space, observation_space=self.shared.observation_space,
        )

    def get_metadata(self) -> EnvironmentMetadata:
        base = self.shared.env.unwrapped
        doc = (type(base).__doc__ or "").strip().split("\n\n")[0]
        return EnvironmentMetadata(name=self.shared.env_id or type(base).__name__, description=doc,
                                   version=__version__)


class BearerTokenMiddleware:
    """ASGI middleware: every HTTP request and WebSocket handshake needs ``Authorization: Bearer <token>``.

    Written here because openenv-core's server has no authentication. A refused WebSocket handshake
    is answered with an HTTP 401 (the ASGI denial-response extension), or closed with code 1008
    (policy violation) by servers without that extension.
    """

    def __init__(self, app: Callable, token: str):
        if not token:
            raise ValueError("the token must be a non-empty string")
        self.app = app
        self._expected = f"Bearer {token}".encode("utf-8")

    def authorised(self, scope: dict[str, Any]) -> bool:
        given = b""
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                given = value
                break
        return hmac.compare_digest(given, self._expected)

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket") or self.authorised(scope):
            await self.app(scope, receive, send)
            return
        response = JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        if scope["type"] == "http":
            await response(scope, receive, send)
            return
        websocket = WebSocket(scope, receive, send)
        if "websocket.http.response" in scope.get("extensions", {}):
            await websocket.send_denial_response(response)
        else:
            await websocket.close(code=1008)


class EndedWebSocketMiddleware:
    """ASGI middleware: a WebSocket session that ends because its connection is gone ends quietly.

    openenv-core's ``/ws`` handler closes the socket in a ``finally`` block and catches only
    ``RuntimeError`` there, but Starlette 1.x raises ``WebSocketDisconnect`` when the client, or a
    server shutting down, has closed the connection already: a normal end of a session, which
    would otherwise be logged as an application error with a traceback.
    """

    def __init__(self, app: Callable):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        try:
            await self.app(scope, receive, send)
        except WebSocketDisconnect:
            if scope["type"] != "websocket":
                raise


def create_app(env: gym.Env, *, token: str | None = None, env_id: str | None = None,
               max_sessions: int = DEFAULT_MAX_SESSIONS) -> FastAPI:
    """The FastAPI app serving ``env`` (a SelfAdaptEnv, possibly wrapped) to up to ``max_sessions``
    concurrent WebSocket sessions; with ``token``, every request needs it as a bearer token."""
    shared = SharedEnv(env, env_id)
    # OpenEnv's create_app would switch to its Gradio interface when ENABLE_WEB_INTERFACE is set;
    # create_fastapi_app is the same app without it.
    app = create_fastapi_app(functools.partial(SelfAdaptSession, shared), SelfEditAction, SelfEditObservation,
                             max_concurrent_envs=max_sessions)
    app.title = f"seal-env: {shared.env_id or type(env.unwrapped).__name__}"
    app.state.shared_env = shared
    # OpenEnv's GET /state declares the base State as its response model, which drops a subclass's
    # fields (the spaces, num_contexts): the same route again, with SelfAdaptState.
    app.router.routes[:] = [r for r in app.router.routes if not (isinstance(r, APIRoute) and r.path == "/state")]

    @app.get("/state", response_model=SelfAdaptState, tags=["State Management"],
             summary="A fresh session's state: the served environment's spaces and contexts")
    async def state() -> SelfAdaptState:
        return SelfAdaptSession(shared).state  # HTTP is stateless in OpenEnv: a new session per request

    async def request_error(request: Request, exc: ServeRequestError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)

    app.add_exception_handler(ServeRequestError, request_error)
    app.add_middleware(EndedWebSocketMiddleware)
    if token is not None:
        app.add_middleware(BearerTokenMiddleware, token=token)
    return app


def make_env(env_id: str, env_kwargs: dict[str, Any] | None = None, model: str | None = None) -> gym.Env:
    """``gym.make(env_id, **env_kwargs)``, with ``model`` (if given) and an ``inner_loop`` given as a
    JSON object turned into an :class:`InnerLoopConfig`."""
    kwargs = dict(env_kwargs or {})
    if model is not None:
        if "model" in kwargs:
            raise ValueError("give the model either with --model or in --env-kwargs, not both")
        kwargs["model"] = model
    if isinstance(kwargs.get("inner_loop"), dict):
        kwargs["inner_loop"] = InnerLoopConfig(**kwargs["inner_loop"])
    return gym.make(env_id, **kwargs)


def server(env: gym.Env, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None,
           env_id: str | None = None, max_sessions: int = DEFAULT_MAX_SESSIONS,
           log_level: str = "info") -> uvicorn.Server:
    """A ``uvicorn.Server`` for ``env`` (not started: ``.run()`` blocks until it is stopped;
    ``.should_exit = True`` stops it from another thread)."""
    app = create_app(env, token=token, env_id=env_id, max_sessions=max_sessions)
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))


def serve_command(args: argparse.Namespace) -> int:
    """``seal-env serve``: load the environment, serve it until SIGINT or SIGTERM; the exit code."""
    try:
        env_kwargs = json_object(args.env_kwargs, "--env-kwargs")
    except ValueError as exc:
        return _usage_error(str(exc))
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV_VAR) or None
    try:
        env = make_env(args.env, env_kwargs, args.model)
    except (gym.error.Error, ValueError, TypeError, OSError) as exc:
        return _usage_error(f"cannot make {args.env}: {exc}")
    try:
        uv = server(env, host=args.host, port=args.port, token=token, env_id=args.env,
                    max_sessions=args.max_sessions)
    except (TypeError, ValueError) as exc:
        return _usage_error(str(exc))
    n = env.unwrapped.num_contexts
    print(f"seal-env serve: {args.env} ({n} contexts) on http://{args.host}:{args.port} "
          f"(sessions: ws://{args.host}:{args.port}/ws); {'bearer token required' if token else 'no token'}",
          file=sys.stderr, flush=True)
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"seal-env serve: warning: listening on {args.host} without --token: anyone who can reach the port "
              "can step the model", file=sys.stderr, flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again for the handler
    # that was there before it; this one makes that a normal return (exit code 0), not a traceback.
    stopped: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: stopped.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uv.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        env.close()
    if not uv.started:
        return 1  # uvicorn has logged why (the port is taken, say)
    how = f" by {signal.Signals(stopped[0]).name}" if stopped else ""
    print(f"seal-env serve: stopped{how}", file=sys.stderr, flush=True)
    return 0


def _usage_error(message: str) -> int:
    print(f"seal-env serve: error: {message}", file=sys.stderr)
    return 2
