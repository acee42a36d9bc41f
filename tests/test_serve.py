"""``seal-env serve`` and ``RemoteEnv`` (seal_env.serve) on a tiny model: remote steps equal local ones,
check_env, the bearer token, malformed requests, concurrent sessions on one model, shutdown, and the
real command in a subprocess."""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

pytest.importorskip("openenv", reason='needs the serve extra: pip install "seal-env[serve]"')

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from websockets.sync.client import connect as ws_connect  # noqa: E402

from conftest import PASSAGES  # noqa: E402
from seal_env import InnerLoopConfig, KnowledgeIncorporationEnv  # noqa: E402
from seal_env import cli  # noqa: E402
from seal_env.spaces import Seconds, UnicodeText  # noqa: E402
from seal_env.serve import RemoteEnv, create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
FAST = InnerLoopConfig(epochs=1)
MAX_CHARS = 400
SELF_EDITS = {
    0: "1. Talia Norwin designed the Velmora Bridge.\n2. The Velmora Bridge is painted ochre.",
    1: "Quell Lake is in the Tarn Valley.\nQuell Lake freezes in March.",
}
TIMING_KEYS = ("train_seconds", "eval_seconds")
TOKEN = "s3cret-token"


def make_env(lm, **kwargs) -> KnowledgeIncorporationEnv:
    return KnowledgeIncorporationEnv(PASSAGES, model=lm, inner_loop=FAST, max_answer_tokens=4,
                                     max_self_edit_chars=MAX_CHARS, **kwargs)


def as_json(info: dict) -> dict:
    """The info as JSON carries it, wall-clock fields aside (they differ from run to run)."""
    return json.loads(json.dumps({k: v for k, v in info.items() if k not in TIMING_KEYS}))


def assert_same_step(remote_step: tuple, local_step: tuple) -> None:
    (r_obs, r_reward, r_term, r_trunc, r_info), (l_obs, l_reward, l_term, l_trunc, l_info) = remote_step, local_step
    assert r_obs == l_obs
    assert type(r_reward) is float and r_reward == l_reward
    assert (r_term, r_trunc) == (l_term, l_trunc)
    assert set(r_info) == set(l_info)
    assert as_json(r_info) == as_json(l_info)
    assert all(type(r_info[k]) is Seconds for k in TIMING_KEYS)


@dataclass
class Served:
    url: str
    port: int
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


@pytest.fixture
def serve():
    """``serve(env, token=None)`` starts a server for ``env`` on a free localhost port in a background
    thread; every server started is stopped when the test ends, passed or failed."""
    started: list[Served] = []

    def start(env: gym.Env, token: str | None = None, **kwargs) -> Served:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))  # the port is ours from here on: no race with other processes
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(env, token=token, **kwargs), log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        served = Served(f"http://127.0.0.1:{port}", port, server, thread)
        started.append(served)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        return served

    yield start
    for served in started:
        served.stop()


@pytest.fixture
def remotes():
    """``remotes(url, token=None)`` opens a RemoteEnv that is closed when the test ends."""
    opened: list[RemoteEnv] = []

    def open_remote(url: str, token: str | None = None) -> RemoteEnv:
        opened.append(RemoteEnv(url, token=token, timeout_s=120))
        return opened[-1]

    yield open_remote
    for remote in opened:
        remote.close()


def test_remote_steps_equal_local_steps(tiny_lm, serve, remotes):
    served = serve(make_env(tiny_lm))
    local = make_env(tiny_lm)  # another env on the same weights: its own baselines
    remote = remotes(served.url)
    assert remote.num_contexts == local.num_contexts == 2
    assert gym.Wrapper(remote).get_wrapper_attr("num_contexts") == 2  # what the training job asks
    assert isinstance(remote.action_space, UnicodeText) and remote.action_space.max_length == MAX_CHARS
    assert remote.observation_space == local.observation_space
    assert remote.env_id is None
    for index in (0, 1, 0):
        assert remote.reset(options={"index": index}) == local.reset(options={"index": index})
        assert_same_step(remote.step(SELF_EDITS[index]), local.step(SELF_EDITS[index]))
    assert remote.reset(seed=3) == local.reset(seed=3)  # the server's session draws as the local np_random
    assert [remote.reset() for _ in range(3)] == [local.reset() for _ in range(3)]
    with pytest.raises(ValueError, match="index"):
        remote.reset(options={"index": 2})
    with pytest.raises(NotImplementedError, match="inner model"):
        remote.update_inner_model(lambda model: None)


def test_check_env_passes_on_remote_env(tiny_lm, serve, remotes):
    check_env(remotes(serve(make_env(tiny_lm)).url), skip_render_check=True)


def test_bad_self_edits_get_reward_zero_with_the_error(tiny_lm, serve, remotes):
    served = serve(make_env(tiny_lm))
    local = make_env(tiny_lm)
    remote = remotes(served.url)
    for bad, reason in [("", "empty"), ("x" * (MAX_CHARS + 1), "limit"), ("bad\x00text", "control character"),
                        ("lone \ud800 surrogate", "surrogate")]:
        remote.reset(options={"index": 0})
        local.reset(options={"index": 0})
        step = remote.step(bad)
        assert step[1] == 0.0 and reason in step[4]["error"]
        assert_same_step(step, local.step(bad))
    with pytest.raises(TypeError, match="str"):
        remote.step(42)
    remote.reset(options={"index": 1})
    assert remote.step(SELF_EDITS[1])[4]["error"] is None  # the session goes on


def test_token_is_required_on_every_request(tiny_lm, serve, remotes):
    served = serve(make_env(tiny_lm), token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = httpx.get(f"{served.url}/health", headers=headers)
        assert response.status_code == 401 and "token" in response.json()["detail"]
        assert httpx.post(f"{served.url}/reset", json={}, headers=headers).status_code == 401
    for token in (None, "wrong"):
        with pytest.raises(ConnectionError, match="401"):
            RemoteEnv(served.url, token=token)
    assert httpx.get(f"{served.url}/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    remote = remotes(served.url, token=TOKEN)
    remote.reset(options={"index": 0})
    assert remote.step(SELF_EDITS[0])[4]["error"] is None


def test_malformed_requests_get_errors_and_the_server_keeps_serving(tiny_lm, serve, remotes):
    served = serve(make_env(tiny_lm))
    with httpx.Client(base_url=served.url) as http:
        cases = [
            ("/reset", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422),
            ("/reset", {"json": {"seed": "seven"}}, 422),
            ("/reset", {"json": {"options": {"index": 5}}}, 400),
            ("/reset", {"json": {"options": [1]}}, 400),
            ("/reset", {"json": {"option": {"index": 0}}}, 400),
            ("/step", {"json": {"action": {"self_edit": SELF_EDITS[0]}}}, 409),  # HTTP is stateless: no episode
            ("/step", {"json": {"action": {"self_edit": 5}}}, 422),
            ("/step", {"json": {"action": {"text": "x"}}}, 422),
            ("/step", {"json": {}}, 422),
        ]
        for path, request, status in cases:
            response = http.post(path, **request)
            assert response.status_code == status, (path, request, response.text)
            assert response.json()["detail"]
        assert "reset" in http.post("/step", json={"action": {"self_edit": "x"}}).json()["detail"]
        reset = http.post("/reset", json={"options": {"index": 1}}).json()
        assert "Quell Lake" in reset["observation"]["context"] and reset["done"] is False
        state = http.get("/state").json()
        assert state["num_contexts"] == 2 and state["action_space"]["max_length"] == MAX_CHARS
    with ws_connect(served.url.replace("http", "ws") + "/ws") as ws:
        def send(message) -> dict:
            ws.send(message if isinstance(message, str) else json.dumps(message))
            return json.loads(ws.recv(timeout=60))

        errors = [
            ("{not json", "INVALID_JSON"),
            ({"type": "step", "data": {"self_edit": "x"}}, "reset"),
            ({"type": "reset", "data": {"options": {"index": 9}}}, "index"),
            ({"type": "reset", "data": {"seed": -1}}, "seed"),
            ({"type": "bogus"}, "UNKNOWN_TYPE"),
        ]
        for message, expected in errors:
            reply = send(message)
            assert reply["type"] == "error" and expected in json.dumps(reply["data"]), reply
        assert send({"type": "reset", "data": {"options": {"index": 0}}})["type"] == "observation"
        for bad_action in ({"text": "x"}, {"self_edit": 5}):
            reply = send({"type": "step", "data": bad_action})
            assert reply["type"] == "error" and reply["data"]["code"] == "VALIDATION_ERROR"
        reply = send({"type": "step", "data": {"self_edit": SELF_EDITS[0]}})  # the same connection still serves
        assert reply["type"] == "observation" and reply["data"]["done"] is True
        assert reply["data"]["reward"] in (0.0, 1.0) and reply["data"]["observation"]["info"]["error"] is None
    remote = remotes(served.url)
    remote.reset(options={"index": 0})
    assert remote.step(SELF_EDITS[0])[4]["error"] is None


class OneStepAtATime(gym.Wrapper):
    """Records every step's interval, to show that the server never runs two steps at once."""

    def __init__(self, env):
        super().__init__(env)
        self.active = 0
        self.most_active = 0
        self.count_lock = threading.Lock()

    def step(self, action):
        with self.count_lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            time.sleep(0.02)  # widen the window in which an interleaved step would be seen
            return super().step(action)
        finally:
            with self.count_lock:
                self.active -= 1


def test_concurrent_sessions_keep_their_own_episodes_and_share_one_model(tiny_lm, serve, remotes):
    served_env = OneStepAtATime(make_env(tiny_lm))
    served = serve(served_env)
    plans = {"a": [0, 1, 0], "b": [1, 0, 1]}
    clients = {name: remotes(served.url) for name in plans}
    barrier = threading.Barrier(len(plans))
    results: dict[str, list] = {}
    failures: list[BaseException] = []

    def run(name: str) -> None:
        try:
            barrier.wait(timeout=30)
            steps = []
            for index in plans[name]:
                obs, info = clients[name].reset(options={"index": index})
                steps.append((obs, info, clients[name].step(SELF_EDITS[index])))
            results[name] = steps
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    assert served_env.most_active == 1
    local = make_env(tiny_lm)
    for name, indices in plans.items():
        for index, (obs, info, step) in zip(indices, results[name]):
            assert (obs, info) == local.reset(options={"index": index})
            assert step[0]["context"] == obs["context"]  # the session's own context, whatever the other did
            assert_same_step(step, local.step(SELF_EDITS[index]))


class BlockingStep(gym.Wrapper):
    """A step that waits until the test lets it finish."""

    def __init__(self, env):
        super().__init__(env)
        self.entered = threading.Event()
        self.release = threading.Event()

    def step(self, action):
        self.entered.set()
        assert self.release.wait(timeout=60)
        return super().step(action)


def test_the_server_answers_while_a_step_runs(tiny_lm, serve, remotes):
    served_env = BlockingStep(make_env(tiny_lm))
    served = serve(served_env)
    remote = remotes(served.url)
    remote.reset(options={"index": 0})
    outcome = []
    stepping = threading.Thread(target=lambda: outcome.append(remote.step(SELF_EDITS[0])))
    stepping.start()
    try:
        assert served_env.entered.wait(timeout=60)
        assert httpx.get(f"{served.url}/health", timeout=10).status_code == 200  # the event loop is free
        assert httpx.get(f"{served.url}/schema", timeout=10).status_code == 200
    finally:
        served_env.release.set()
        stepping.join(timeout=60)
    assert outcome and outcome[0][4]["error"] is None


def test_clean_shutdown_frees_the_port(tiny_lm, serve):
    served = serve(make_env(tiny_lm))
    remote = RemoteEnv(served.url)
    try:
        remote.reset(options={"index": 0})
        remote.step(SELF_EDITS[0])
        served.stop()  # with the session still open
        assert not served.thread.is_alive()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", served.port), timeout=5).close()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", served.port))
        with pytest.raises((ConnectionError, RuntimeError)):
            remote.reset(options={"index": 0})
    finally:
        remote.close()


def run_train(model_dir: Path, output: Path, *extra: str) -> list[dict]:
    """``seal-env train`` (one ReST-EM round on the built-in passages) in a subprocess; its step log."""
    args = [sys.executable, "-m", "seal_env.cli", "train", "--model", str(model_dir), "--output-dir", str(output),
            "--rounds", "1", "--contexts-per-round", "2", "--eval-contexts", "2", "--samples-per-context", "2",
            "--max-new-tokens", "12", "--inner-epochs", "1", "--device", "cpu", "--num-envs", "1", *extra]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                                 "SEAL_ENV_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (output / "steps.jsonl").read_text(encoding="utf-8").splitlines()
    return [without_timings(json.loads(line)) for line in lines]


def without_timings(value):
    """A logged record without its wall-clock fields, at any depth."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in (*TIMING_KEYS, "minutes")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def test_seal_env_train_against_a_served_env_logs_what_a_local_run_logs(tiny_model_dir, serve, tmp_path):
    """The agent, the runner and the log do not know the difference: the served environment (the
    settings the local job gives its own) yields the same steps as stepping in the job's process."""
    from agents.train_config import TrainConfig
    from seal_env.models import load_model
    from seal_env.serve import make_env as make_served_env

    env_kwargs = {"max_answer_tokens": 4, "reward_margin": -1e9}  # every usable self-edit is rewarded
    inner_loop = replace(TrainConfig().inner_loop, epochs=1)  # what --inner-epochs 1 gives the local job
    served_env = make_served_env("seal_env/KnowledgeIncorporation-v0", {**env_kwargs, "inner_loop": inner_loop},
                                 model=load_model(str(tiny_model_dir), device="cpu"))
    served = serve(served_env, token=TOKEN)
    local = run_train(tiny_model_dir, tmp_path / "local", "--env-kwargs", json.dumps(env_kwargs))
    remote = run_train(tiny_model_dir, tmp_path / "remote", "--env-url", served.url)
    steps = [record for record in remote if record["kind"] == "step"]
    assert len(steps) == 8  # 2 held-out contexts before and after the round, 2 training contexts x 2 samples
    assert remote == local


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_seal_env_serve_command(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir
    passages = tmp_path / "passages.json"
    passages.write_text(json.dumps([{"title": p.title, "context": p.context,
                                     "questions": [{"question": q.question, "answer": q.answers[0]} for q in p.questions]}
                                    for p in PASSAGES]), encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env_kwargs = {"passages": str(passages), "max_answer_tokens": 4, "inner_loop": {"epochs": 1}}
    process = subprocess.Popen(
        [sys.executable, "-m", "seal_env.cli", "serve", "--model", str(model_dir), "--env-kwargs", json.dumps(env_kwargs),
         "--port", str(port)],
        env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "SEAL_ENV_TOKEN": TOKEN},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "seal-env serve did not answer"
            try:
                if httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.25)
        remote = RemoteEnv(url, token=TOKEN, timeout_s=120)
        try:
            assert remote.env_id == "seal_env/KnowledgeIncorporation-v0" and remote.num_contexts == 2
            obs, _ = remote.reset(options={"index": 0})
            assert "Velmora" in obs["context"]
            _, reward, terminated, _, info = remote.step(SELF_EDITS[0])
            assert reward in (0.0, 1.0) and terminated is True and info["error"] is None
            process.send_signal(signal.SIGINT)  # Ctrl-C, with a session still open
            _, stderr = process.communicate(timeout=60)
        finally:
            remote.close()
        assert process.returncode == 0, stderr[-3000:]
        assert "stopped by SIGINT" in stderr and "Traceback" not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_serve_command_usage_errors(capsys):
    assert cli.main(["serve", "--env-kwargs", "{oops"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert cli.main(["serve", "--env-kwargs", "[1]"]) == 2
    assert "JSON object" in capsys.readouterr().err
    assert cli.main(["serve", "--env", "seal_env/NoSuchEnv-v0"]) == 2
    assert "NoSuchEnv" in capsys.readouterr().err


def test_missing_serve_extra_gives_a_clear_error(monkeypatch, capsys):
    for name in [name for name in sys.modules if name == "openenv" or name.startswith("openenv.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if openenv-core were not installed
    monkeypatch.delitem(sys.modules, "seal_env.serve")
    # Arguments that stop the command before it loads anything, should the import succeed after all.
    assert cli.main(["serve", "--env-kwargs", "[1]"]) == 1
    assert 'pip install "seal-env[serve]"' in capsys.readouterr().err


def test_nothing_else_in_seal_env_imports_the_serve_extra():
    """seal_env.serve and its dependencies are an optional extra: only the serve command's handler
    imports it, inside the function (so `import seal_env` and `seal-env --help` never need it)."""
    extra = {"seal_env.serve", "openenv", "fastapi", "uvicorn", "websockets", "httpx", "starlette"}

    def eager_imports(tree: ast.AST) -> set[str]:
        """Modules imported when the file is imported: everywhere but inside a function."""
        names = set()
        for node in ast.iter_child_nodes(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            names |= eager_imports(node)
        return names

    serve_package = ROOT / "seal_env" / "serve"
    offenders = {}
    for path in sorted((ROOT / "seal_env").rglob("*.py")):
        if path.is_relative_to(serve_package):
            continue
        names = eager_imports(ast.parse(path.read_text(encoding="utf-8")))
        bad = sorted(n for n in names if n.startswith("seal_env.serve") or n.split(".")[0] in extra)
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}


def test_serve_overhead_benchmark_reports_both_kinds_of_step(tiny_model_dir, tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import serve_overhead

    out = tmp_path / "serve_overhead.json"
    assert serve_overhead.main(["--model", str(tiny_model_dir), "--contexts", "2", "--repeats", "2",
                                "--json", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["same_rewards_and_scores"] is True  # the served env is the in-process one, stepped remotely
    assert set(result["kinds"]) == {"update", "rejected"}
    for row in result["kinds"].values():
        assert len(row["local_seconds"]["all"]) == len(row["remote_seconds"]["all"]) == 4
        overhead = row["overhead_seconds"]
        assert overhead["low"] <= overhead["mean"] <= overhead["high"]
    assert "overhead" in out.with_suffix(".md").read_text(encoding="utf-8")
