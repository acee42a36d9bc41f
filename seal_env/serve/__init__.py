"""``seal-env serve``: an environment over HTTP/WebSocket in the OpenEnv conventions, and
:class:`RemoteEnv`, the Gymnasium environment that steps it from another process or machine.

An optional extra (``pip install "seal-env[serve]"``: openenv-core, fastapi, uvicorn, websockets,
httpx); nothing else in ``seal_env`` imports this module.

Server. :func:`create_app` builds the app with openenv-core's own ``create_fastapi_app`` (its
``HTTPEnvServer`` routes: ``POST /reset``, ``POST /step``, ``GET /state``, ``/schema``,
``/metadata``, ``/health`` and the ``/ws`` WebSocket session), never its Gradio interface. OpenEnv
gives every WebSocket connection its own ``Environment`` from a factory; here that is a
:class:`SelfAdaptSession`, a light object holding one client's episode (its random generator,
context index, episode id, step count) over ONE shared environment (one loaded model). Every call
into the shared environment runs in a worker thread (OpenEnv's per-session executor) under one
lock, so steps of concurrent sessions are serialised and never interleave an adapter, while the
event loop keeps answering. The typed messages are :class:`SelfEditAction`,
:class:`SelfEditObservation` and :class:`SelfAdaptState` (pydantic, subclasses of OpenEnv's
``Action``, ``Observation`` and ``State``). HTTP ``/reset`` and ``/step`` are stateless in OpenEnv
(one fresh session per request), so ``/step`` over HTTP always answers 409: episodes need ``/ws``.

Errors. A malformed request gets an error and the server keeps serving: over HTTP a 4xx with a
JSON body (422 for bad JSON, missing fields or wrong types, from FastAPI; 400 for a context index
out of range or an unknown reset parameter; 409 for a step before reset); over the WebSocket an
OpenEnv ``{"type": "error", "data": {"message", "code"}}`` message, the connection staying open. A
bad self-edit is no error: the environment gives it reward 0.0 and ``info["error"]``.

Authentication. With ``token``, every HTTP request and WebSocket handshake needs
``Authorization: Bearer <token>`` (compared with :func:`hmac.compare_digest`); otherwise 401.

Client. ``RemoteEnv(url, token=None)`` is a ``gymnasium.Env`` with the served environment's spaces
(sent by the server in the state), ``reset(seed=, options={"index": i})`` and ``step(self_edit)``
returning what the local environment returns (``info`` as JSON: numbers, strings, lists, dicts;
the wall-clock fields are :class:`~seal_env.spaces.Seconds` again). It talks to ``/ws`` through
openenv-core's ``EnvClient`` and its synchronous wrapper.
"""

from __future__ import annotations

try:  # the optional extra: checked here once, so that a missing package gives one clear message
    import fastapi  # noqa: F401
    import openenv.core.env_client  # noqa: F401
    import openenv.core.env_server.http_server  # noqa: F401
    import uvicorn  # noqa: F401
    import websockets  # noqa: F401
except ImportError as exc:
    raise ModuleNotFoundError(
        f'seal_env.serve needs the optional "serve" extra ({exc.name} is missing): pip install "seal-env[serve]"',
        name=exc.name,
    ) from exc

from seal_env.serve.client import RemoteEnv, SelfAdaptClient
from seal_env.serve.messages import (
    NoEpisodeError,
    SelfAdaptState,
    SelfEditAction,
    SelfEditObservation,
    ServeRequestError,
    describe_space,
    json_safe,
    space_from_description,
)
from seal_env.serve.server import (
    DEFAULT_HOST,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_PORT,
    TOKEN_ENV_VAR,
    BearerTokenMiddleware,
    EndedWebSocketMiddleware,
    SelfAdaptSession,
    SharedEnv,
    create_app,
    make_env,
    serve_command,
    server,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_SESSIONS",
    "DEFAULT_PORT",
    "TOKEN_ENV_VAR",
    "BearerTokenMiddleware",
    "EndedWebSocketMiddleware",
    "NoEpisodeError",
    "RemoteEnv",
    "SelfAdaptClient",
    "SelfAdaptSession",
    "SelfAdaptState",
    "SelfEditAction",
    "SelfEditObservation",
    "ServeRequestError",
    "SharedEnv",
    "create_app",
    "describe_space",
    "json_safe",
    "make_env",
    "serve_command",
    "server",
    "space_from_description",
]
