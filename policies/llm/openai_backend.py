"""Play envs with any OpenAI-compatible chat-completions server (OpenAI, vLLM, llama.cpp, ``policies.llm.server``).

Unlike ``LLMPolicy``, which works on token ids, this policy works on text: the server owns the tokenizer and the
chat template, so per episode it keeps the chat ``messages`` and sends them whole each turn. All live episodes'
requests go out concurrently (a thread pool bounded by ``concurrency``); each request has a timeout and is retried
with exponential backoff and jitter on timeouts, connection errors, 429 and 5xx. A request that still fails stops
its episode with a warning (the rollout engine truncates it and the run goes on), except when nothing has ever
succeeded and the whole first batch fails: that is a down or misconfigured server, and it raises at once rather
than producing a run of empty episodes.

Only the standard library is used for HTTP (``urllib``), so this backend needs no extra dependency.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agentgym.env import observation_text
from agentgym.errors import AgentGymError
from agentgym.types import ActionBatch
from policies.llm.prompts import PromptStyle, system_prompt, user_message

#: Environment variable holding the server's base URL (for example ``http://127.0.0.1:8000/v1``).
BASE_URL_ENV = "OPENAI_BASE_URL"
#: Environment variable holding the API key (optional: local servers usually need none).
API_KEY_ENV = "OPENAI_API_KEY"

# How servers phrase "the prompt is longer than the context" (OpenAI's code, vLLM's and llama.cpp's messages).
_CONTEXT_ERROR = re.compile(r"context[ _](length|size|window)|maximum context|too many tokens|prompt is too long",
                            re.IGNORECASE)


class ServerUnavailableError(AgentGymError, ConnectionError):
    """Every request of the first batch failed: the server is down, unreachable or misconfigured."""


@dataclass(frozen=True)
class OpenAIPolicyConfig:
    """Connection, retry and sampling settings.

    Attributes:
        base_url: the API root, ending before ``/chat/completions`` (for example ``http://host:8000/v1``).
        model: the model name the server serves.
        api_key: sent as a bearer token when set.
        temperature: sampling temperature (0: greedy).
        top_p: nucleus mass.
        max_new_tokens: ``max_tokens`` of each reply.
        think: ask for ``<think>...</think><answer>...</answer>`` replies instead of a bare action.
        hints: include the env family's strategy hints in the system prompt.
        concurrency: at most this many requests in flight.
        timeout: seconds a single request may wait on the socket (connect or read).
        max_retries: retries after the first attempt, on retryable failures only.
        backoff: seconds before the first retry; doubles each retry, with full jitter.
        max_backoff: cap on one backoff sleep (also on a server's ``Retry-After``).
        logprobs: ask for sampled log-probs (servers that ignore the flag are fine).
    """

    base_url: str
    model: str
    api_key: str | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    think: bool = False
    hints: bool = True
    concurrency: int = 8
    timeout: float = 60.0
    max_retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 20.0
    logprobs: bool = True

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise AgentGymError(f"base_url={self.base_url!r} must start with http:// or https://.")
        checks = {"concurrency": self.concurrency >= 1, "max_new_tokens": self.max_new_tokens >= 1,
                  "timeout": self.timeout > 0, "max_retries": self.max_retries >= 0, "backoff": self.backoff >= 0,
                  "temperature": self.temperature >= 0, "top_p": 0 < self.top_p <= 1}
        for name, ok in checks.items():
            if not ok:
                raise AgentGymError(f"{name}={getattr(self, name)!r} is out of range for the openai policy.")


class RequestError(Exception):
    """One failed HTTP exchange (internal; turned into warnings or ``ServerUnavailableError``).

    Attributes:
        status: the HTTP status, or None for timeouts and connection errors.
        detail: the server's error message, or the transport error.
        retryable: whether another attempt may succeed.
        context: whether the server said the prompt does not fit its context.
    """

    def __init__(self, status: int | None, detail: str, *, retryable: bool, context: bool = False) -> None:
        super().__init__(detail)
        self.status, self.detail, self.retryable, self.context = status, detail, retryable, context
        self.attempts = 1
        self.retry_after: float | None = None


@dataclass
class Reply:
    """What one chat completion returned."""

    content: str
    finish_reason: str
    prompt_tokens: int
    response_tokens: int
    logprobs: list[float] | None
    attempts: int
    usage_estimated: bool = False


class ChatClient:
    """POSTs chat completions with timeouts, retries, backoff and jitter (thread-safe, stateless per call)."""

    def __init__(self, config: OpenAIPolicyConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self._sleep = sleep
        self._jitter = random.Random()

    def complete(self, payload: dict[str, Any]) -> Reply:
        """One completion, retried on retryable failures; raises the last ``RequestError`` when out of attempts."""
        cfg = self.config
        for attempt in range(cfg.max_retries + 1):
            try:
                return _parse_reply(self._post(payload), attempt + 1)
            except RequestError as exc:
                if not exc.retryable or attempt == cfg.max_retries:
                    exc.attempts = attempt + 1
                    exc.detail = f"{exc.detail} (after {attempt + 1} attempt(s))"
                    raise
                # Full jitter spreads the retries of many concurrent episodes so they do not hit the server together.
                delay = exc.retry_after if exc.retry_after is not None else \
                    self._jitter.uniform(0, cfg.backoff * 2 ** attempt)
                self._sleep(min(delay, cfg.max_backoff))
        raise AssertionError("unreachable")

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(payload).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from None
        except TimeoutError:  # socket.timeout is TimeoutError since Python 3.10
            raise RequestError(None, f"no answer within timeout={self.config.timeout}s", retryable=True) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                detail = f"no answer within timeout={self.config.timeout}s"
            else:
                detail = f"cannot reach the server: {exc.reason}"
            raise RequestError(None, detail, retryable=True) from None
        except (ConnectionError, OSError) as exc:  # reset mid-response, broken pipe
            raise RequestError(None, f"connection failed: {exc}", retryable=True) from None
        try:
            # JSON is UTF-8; a server that sends invalid bytes gets replacement characters rather than a failure.
            data = json.loads(body.decode("utf-8", errors="replace"))
        except ValueError:
            raise RequestError(200, f"the reply is not JSON: {body[:200]!r}", retryable=True) from None
        if not isinstance(data, dict):
            raise RequestError(200, f"the reply is not a JSON object: {body[:200]!r}", retryable=False)
        return data


def _http_error(exc: urllib.error.HTTPError) -> RequestError:
    """Classify an HTTP error status, keeping the server's own message (OpenAI's ``{"error": {...}}`` shape)."""
    try:
        raw = exc.read()
    except OSError:
        raw = b""
    try:
        error = json.loads(raw).get("error", {})
        message = error.get("message", "") if isinstance(error, dict) else str(error)
        code = str(error.get("code", "")) if isinstance(error, dict) else ""
    except (ValueError, AttributeError):
        message, code = raw[:300].decode("utf-8", "replace"), ""
    status = exc.code
    context = status in (400, 413, 422) and (code == "context_length_exceeded" or bool(_CONTEXT_ERROR.search(message)))
    error_obj = RequestError(status, f"HTTP {status}: {message or exc.reason}",
                             retryable=status == 429 or status >= 500, context=context)
    retry_after = exc.headers.get("Retry-After") if exc.headers is not None else None
    try:
        error_obj.retry_after = float(retry_after) if retry_after is not None else None
    except ValueError:  # an HTTP date instead of seconds: fall back on our own backoff
        pass
    return error_obj


def _parse_reply(data: dict[str, Any], attempts: int) -> Reply:
    """Read content, finish reason, usage and log-probs, tolerating servers that omit the optional parts."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise RequestError(200, f"the reply has no choices: {json.dumps(data)[:200]}", retryable=False)
    choice = choices[0]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content")
    content = content if isinstance(content, str) else ""  # None (refusals, tool calls) plays as an empty reply
    logprobs = None
    lp = choice.get("logprobs")
    if isinstance(lp, dict) and isinstance(lp.get("content"), list):
        logprobs = [float(t.get("logprob", 0.0)) for t in lp["content"] if isinstance(t, dict)]
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    response_tokens, estimated = usage.get("completion_tokens"), False
    if not isinstance(response_tokens, int):
        # Token budgets need a count; without usage, fall back on log-probs, else about four characters a token.
        response_tokens = len(logprobs) if logprobs is not None else (len(content) + 3) // 4
        estimated = True
    prompt_tokens = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else 0
    return Reply(content, str(choice.get("finish_reason") or ""), prompt_tokens, response_tokens, logprobs,
                 attempts, estimated)


@dataclass
class ChatMemory:
    """One episode's chat: the system message, then alternating user and assistant messages."""

    messages: list[dict[str, str]]
    turn: int = 0
    dropped_turns: int = 0
    logprobs: list[float] = field(default_factory=list)
    has_logprobs: bool = False

    def drop_oldest(self) -> bool:
        """Drop the oldest half of the finished turns (at least one); False when only the current one is left."""
        finished = (len(self.messages) - 2) // 2  # system first, the current user message last
        if finished <= 0:
            return False
        drop = max(1, finished // 2)
        del self.messages[1:1 + 2 * drop]
        self.dropped_turns += drop
        return True

    def export(self) -> dict[str, Any]:
        """Trajectory fields: the sampled log-probs of every reply, in order (no token ids: the server has them)."""
        return {"logprobs": self.logprobs if self.has_logprobs else None, "context_dropped_turns": self.dropped_turns}


class OpenAIChatPolicy:
    """Plays envs through their text view with a model behind an OpenAI-compatible chat-completions API.

    Same contract as ``LLMPolicy``: ``begin`` opens an episode's chat, ``act`` returns one text reply per episode
    and per-episode ``prompt_tokens``/``response_tokens``/``finish_reason``/``warnings``/``stop`` in
    ``ActionBatch.info["episodes"]``. An episode whose request fails for good plays an empty reply (an invalid,
    no-op step) with ``stop=True``, so the engine truncates it and keeps the run going.
    """

    def __init__(self, config: OpenAIPolicyConfig, *, client: ChatClient | None = None) -> None:
        self.config = config
        self.client = client or ChatClient(config)
        self.style = PromptStyle(think=config.think, hints=config.hints)
        self._pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="openai-policy")
        self._lock = threading.Lock()
        self._ever_succeeded = False
        self._send_logprobs = config.logprobs

    def close(self) -> None:
        """Stop the request threads."""
        self._pool.shutdown(wait=False)

    def begin(self, env: Any, obs: Any, info: dict[str, Any]) -> ChatMemory:
        """Start an episode's chat with the env's system prompt."""
        return ChatMemory([{"role": "system", "content": system_prompt(env, self.style)}])

    def act(self, observations: Sequence[Any], *, envs: Sequence[Any], rng: np.random.Generator,
            memories: Sequence[Any] | None = None) -> ActionBatch:
        """Send every episode's chat concurrently; one text action per episode."""
        if memories is None:
            memories = [self.begin(env, obs, {}) for env, obs in zip(envs, observations, strict=True)]
        for env, obs, memory in zip(envs, observations, memories, strict=True):
            memory.messages.append({"role": "user", "content": user_message(env, observation_text(env, obs),
                                                                            memory.turn)})
        # One seed per request: servers that do not batch would otherwise give a group's episodes, which share a
        # prompt, identical replies.
        seeds = [int(rng.integers(2**31)) for _ in memories]
        results = list(self._pool.map(self._play_turn, memories, seeds))
        failures = [error for _, _, error in results if error is not None]
        if results and not self._ever_succeeded and len(failures) == len(results) \
                and not all(error.context for error in failures):
            raise ServerUnavailableError(
                f"Every request of the first turn to {self.client.url} failed, so the run was stopped instead of "
                f"producing empty episodes. First failure: {results[0][1]['warnings'][-1]}")
        if len(failures) < len(results):
            self._ever_succeeded = True
        return ActionBatch([action for action, _, _ in results], info={"episodes": [meta for _, meta, _ in results]})

    def _payload(self, memory: ChatMemory, seed: int) -> dict[str, Any]:
        cfg = self.config
        payload: dict[str, Any] = {"model": cfg.model, "messages": list(memory.messages), "n": 1,
                                   "temperature": cfg.temperature, "top_p": cfg.top_p,
                                   "max_tokens": cfg.max_new_tokens, "seed": seed}
        if self._send_logprobs:
            payload["logprobs"] = True
        return payload

    def _play_turn(self, memory: ChatMemory, seed: int) -> tuple[str, dict[str, Any], RequestError | None]:
        """One episode's request, with context recovery; returns (action, episode info, final error or None)."""
        warnings: list[str] = []
        while True:
            try:
                reply = self.client.complete(self._payload(memory, seed))
                break
            except RequestError as exc:
                if exc.context and memory.drop_oldest():
                    warnings.append(f"the server's context is full at turn {memory.turn}; dropped old turns "
                                    f"({memory.dropped_turns} dropped so far) and retried")
                    continue
                if exc.status == 400 and self._send_logprobs and "logprob" in exc.detail.lower():
                    self._send_logprobs = False  # a server that refuses the flag: go on without log-probs
                    continue
                memory.messages.append({"role": "assistant", "content": ""})  # keep user/assistant alternation
                memory.turn += 1
                warnings.append(self._failure_message(exc, memory.turn - 1))
                return "", {"prompt_tokens": 0, "response_tokens": 0, "finish_reason": "error", "stop": True,
                            "warnings": warnings, "attempts": exc.attempts}, exc
        memory.messages.append({"role": "assistant", "content": reply.content})
        if reply.logprobs is not None:
            memory.logprobs.extend(reply.logprobs)
            memory.has_logprobs = True
        if reply.finish_reason == "length":
            warnings.append(f"reply hit max_tokens={self.config.max_new_tokens} without finishing "
                            f"(turn {memory.turn}); it was cut there")
        if not reply.content.strip():
            warnings.append(f"the server returned an empty reply at turn {memory.turn}")
        meta = {"prompt_tokens": reply.prompt_tokens, "response_tokens": reply.response_tokens,
                "finish_reason": reply.finish_reason, "warnings": warnings, "attempts": reply.attempts,
                "logprobs": reply.logprobs, "usage_estimated": reply.usage_estimated}
        memory.turn += 1
        return reply.content, meta, None

    def _failure_message(self, exc: RequestError, turn: int) -> str:
        """A warning naming the URL, the status and what to change."""
        if exc.context:
            fix = ("even the system prompt and the current observation exceed the server's context; serve a model "
                   "with a longer context or shorten the prompt (hints=False)")
        elif exc.status is None:
            fix = (f"check that a server is running at {BASE_URL_ENV}={self.config.base_url} and can answer within "
                   f"timeout={self.config.timeout}s (raise timeout for slow models, lower concurrency for busy ones)")
        elif exc.status in (401, 403):
            fix = f"set {API_KEY_ENV} to a key this server accepts"
        elif exc.status == 404:
            fix = (f"check the model name {self.config.model!r} (see GET /models) and that the base URL ends in the "
                   "API root, usually /v1")
        elif exc.status == 429:
            fix = "the server is rate-limiting: lower concurrency or raise max_retries"
        elif exc.status >= 500:
            fix = "the server failed; see its log"
        else:
            fix = "the server rejected the request; check the sampling options against what it supports"
        status = f"HTTP {exc.status}" if exc.status is not None else "no HTTP status"
        return f"openai policy: POST {self.client.url} failed at turn {turn} ({status}): {exc.detail}. Fix: {fix}."



def make_openai_policy(env: Any = None, *, model: str, base_url: str | None = None, api_key: str | None = None,
                       temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 64, think: bool = False,
                       concurrency: int = 8, timeout: float = 60.0, max_retries: int = 4,
                       **kwargs: Any) -> OpenAIChatPolicy:
    """The ``openai`` policy: ``--policy openai:MODEL`` against ``$OPENAI_BASE_URL`` (key from ``$OPENAI_API_KEY``).

    Args:
        env: unused (the prompts come from each episode's env).
        model: the served model's name.
        base_url: the API root (None: ``$OPENAI_BASE_URL``).
        api_key: bearer token (None: ``$OPENAI_API_KEY``, optional for local servers).
        temperature: sampling temperature.
        top_p: nucleus mass.
        max_new_tokens: ``max_tokens`` per reply.
        think: ask for a short reasoning before the answer.
        concurrency: requests in flight at most.
        timeout: seconds per request attempt.
        max_retries: retries of a failed request.
        **kwargs: other ``OpenAIPolicyConfig`` fields (``hints``, ``backoff``, ``max_backoff``, ``logprobs``).

    Raises:
        AgentGymError: no base URL, or an unknown option.
    """
    base_url = base_url or os.environ.get(BASE_URL_ENV)
    if not base_url:
        raise AgentGymError(f"The openai policy needs the server's base URL: set {BASE_URL_ENV} (for example "
                            f"{BASE_URL_ENV}=http://127.0.0.1:8000/v1) or pass base_url.")
    extra = {"hints", "backoff", "max_backoff", "logprobs"}
    unknown = set(kwargs) - extra
    if unknown:
        raise AgentGymError(f"Unknown openai policy option(s) {sorted(unknown)}; options are base_url, api_key, "
                            f"temperature, top_p, max_new_tokens, think, concurrency, timeout, max_retries, "
                            f"{', '.join(sorted(extra))}.")
    config = OpenAIPolicyConfig(base_url=base_url, model=model, api_key=api_key or os.environ.get(API_KEY_ENV),
                                temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, think=think,
                                concurrency=concurrency, timeout=timeout, max_retries=max_retries, **kwargs)
    return OpenAIChatPolicy(config)
