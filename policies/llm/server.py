"""A small OpenAI-compatible chat-completions server over any ``LLMBackend`` (the transformers backend by default).

    python -m policies.llm.server --model smollm2 --host 127.0.0.1 --port 8000

serves ``GET /v1/models`` and ``POST /v1/chat/completions`` so that anything speaking the OpenAI API (the
``openai`` policy, other tools) can use a local model. Messages go through the tokenizer's chat template, the
backend samples, and the reply carries OpenAI's ``finish_reason``, ``usage`` and, on request, per-token
``logprobs``. Requests that arrive within a few milliseconds of each other with the same sampling settings are
micro-batched into one ``generate`` call, which is what makes concurrent episodes cheap on a batched backend.

Seeds: a request's ``seed`` makes it reproducible when it is served alone (``--max-batch 1``); in a micro-batch
one sampler stream serves all rows, seeded from all the batch's seeds. Only the standard library serves HTTP.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from policies.llm.base import Generation, LLMBackend, SamplingParams

API_ROOT = "/v1"
#: OpenAI's finish reasons for ours: guided decoding and end-of-sequence both end the reply normally.
FINISH_REASONS = {"eos": "stop", "stop": "stop", "choice": "stop", "length": "length"}
_ROLES = {"system", "developer", "user", "assistant", "tool"}


class APIError(Exception):
    """An error reply in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        """The JSON error object."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    """A validated chat request: the templated prompt ids and how to sample."""

    prompt_ids: list[int]
    params: SamplingParams
    logprobs: bool
    model: str


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float, *, open_lo: bool = False) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo < value if open_lo else lo <= value) \
            or value > hi:
        bound = f"({lo}, {hi}]" if open_lo else f"[{lo}, {hi}]"
        raise APIError(400, f"{name}={value!r} must be a number in {bound}.", param=name)
    return float(value)


def _content(message: Any, index: int) -> dict[str, str]:
    """One message as ``{"role", "content"}`` text (content parts of type ``text`` are joined)."""
    if not isinstance(message, dict) or message.get("role") not in _ROLES:
        raise APIError(400, f"messages[{index}] must be an object with a role in {sorted(_ROLES)}.", param="messages")
    content = message.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise APIError(400, f"messages[{index}].content: only text parts are supported.", param="messages")
        content = "".join(p["text"] for p in content)
    if content is None and message["role"] == "assistant":
        content = ""
    if not isinstance(content, str):
        raise APIError(400, f"messages[{index}].content must be a string or a list of text parts.", param="messages")
    return {"role": message["role"], "content": content}


def _stops(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise APIError(400, "stop must be a non-empty string or a list of at most 4 of them.", param="stop")
    return tuple(stops)


def parse_chat_request(raw: bytes, tokenizer: Any, max_context: int, served: Sequence[str],
                       default_max_tokens: int) -> ChatRequest:
    """Validate a request body and render its messages through the chat template.

    Raises:
        APIError: 400 for malformed or unsupported requests (and prompts longer than the context), 404 for a model
            this server does not serve.
    """
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        raise APIError(400, f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "Missing required field 'model'.", param="model")
    if model not in served:
        raise APIError(404, f"The model {model!r} is not served here; available: {', '.join(served)}.",
                       kind="not_found_error", param="model", code="model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "Missing required field 'messages' (a non-empty list).", param="messages")
    if body.get("n", 1) not in (1, None):
        raise APIError(400, f"n={body['n']!r} is not supported; this server returns one choice (n=1).", param="n")
    if body.get("stream"):
        raise APIError(400, "stream=true is not supported; request the whole completion.", param="stream")
    if body.get("top_logprobs"):
        raise APIError(400, "top_logprobs is not supported; logprobs=true returns the sampled tokens' log-probs.",
                       param="top_logprobs")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = default_max_tokens if max_tokens is None else max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise APIError(400, f"max_tokens={max_tokens!r} must be an integer >= 1.", param="max_tokens")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(400, f"seed={seed!r} must be an integer.", param="seed")
    chat = [_content(m, i) for i, m in enumerate(messages)]
    try:
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # template errors (e.g. role order a template rejects) are the caller's to fix
        raise APIError(400, f"The chat template rejected these messages: {exc}.", param="messages") from None
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if len(ids) >= max_context:
        raise APIError(400, f"This model's maximum context length is {max_context} tokens, but the messages take "
                            f"{len(ids)} tokens. Shorten the messages.", param="messages",
                       code="context_length_exceeded")
    params = SamplingParams(
        max_new_tokens=min(max_tokens, max_context - len(ids)),  # as much of the request as the context allows
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, open_lo=True),
        stop=_stops(body), seed=(seed % 2**63) if seed is not None else None)
    return ChatRequest(ids, params, bool(body.get("logprobs")), model)


def build_completion(request: ChatRequest, generation: Generation, tokenizer: Any) -> dict[str, Any]:
    """The ``chat.completion`` object for one generation (a stop string is cut from the content, as OpenAI does)."""
    text = generation.text
    if generation.finish_reason == "stop":
        cuts = [i for i in (text.find(s) for s in request.params.stop) if i >= 0]
        text = text[:min(cuts)] if cuts else text
    logprobs = None
    if request.logprobs:
        tokens = [tokenizer.decode([t]) for t in generation.token_ids]
        logprobs = {"content": [{"token": tok, "logprob": float(lp), "bytes": list(tok.encode("utf-8")),
                                 "top_logprobs": []} for tok, lp in zip(tokens, generation.logprobs, strict=True)]}
    n_prompt, n_reply = len(request.prompt_ids), len(generation.token_ids)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": request.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                     "finish_reason": FINISH_REASONS.get(generation.finish_reason, "stop")}],
        "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_reply, "total_tokens": n_prompt + n_reply},
    }


@dataclass
class _Pending:
    request: ChatRequest
    done: threading.Event = field(default_factory=threading.Event)
    result: Generation | None = None
    error: BaseException | None = None


class MicroBatcher:
    """Serialises ``generate`` calls and batches the requests that arrive together.

    One worker thread owns the backend. It waits ``window_s`` after the first queued request so that concurrent
    requests can join, groups them by sampling settings (the seed aside), and makes one ``generate`` call per group
    of at most ``max_batch``. Requests arriving meanwhile wait for the next round.
    """

    def __init__(self, backend: LLMBackend, *, max_batch: int = 8, window_s: float = 0.005) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be >= 1.")
        self.backend, self.max_batch, self.window_s = backend, max_batch, window_s
        self.calls = 0
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        threading.Thread(target=self._run, name="generate", daemon=True).start()

    def submit(self, request: ChatRequest) -> Generation:
        """Queue a request and wait for its generation (re-raising the backend's error)."""
        item = _Pending(request)
        with self._cond:
            self._queue.append(item)
            self._cond.notify()
        item.done.wait()
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
            if self.max_batch > 1:
                time.sleep(self.window_s)
            with self._cond:
                batch, self._queue = self._queue, []
            groups: dict[SamplingParams, list[_Pending]] = {}
            for item in batch:
                groups.setdefault(replace(item.request.params, seed=None), []).append(item)
            for key, items in groups.items():
                for start in range(0, len(items), self.max_batch):
                    self._generate(key, items[start:start + self.max_batch])

    def _generate(self, key: SamplingParams, items: list[_Pending]) -> None:
        seeds = [i.request.params.seed for i in items]
        # A batch has one sampler stream: seed it from every request's seed, so equal batches replay exactly.
        seed = None if any(s is None for s in seeds) else seeds[0] if len(seeds) == 1 else \
            hash(tuple(sorted(s for s in seeds if s is not None))) % 2**63
        try:
            self.calls += 1
            out = self.backend.generate([i.request.prompt_ids for i in items], replace(key, seed=seed))
            if len(out) != len(items):
                raise RuntimeError(f"the backend returned {len(out)} generations for {len(items)} prompts")
            for item, gen in zip(items, out, strict=True):
                item.result = gen
        except BaseException as exc:  # every waiting request must hear about it, or its handler hangs forever
            for item in items:
                item.error = exc
        finally:
            for item in items:
                item.done.set()


class ChatApp:
    """The server's logic, independent of HTTP: model listing and chat completions."""

    def __init__(self, backend: LLMBackend, model_name: str, *, max_batch: int = 8, window_s: float = 0.005,
                 default_max_tokens: int = 256, log_requests: bool = False) -> None:
        self.backend, self.model_name = backend, model_name
        self.default_max_tokens, self.log_requests = default_max_tokens, log_requests
        self.batcher = MicroBatcher(backend, max_batch=max_batch, window_s=window_s)
        self.created = int(time.time())
        # Our own tokenizer calls run in request threads; one lock keeps a fast tokenizer from concurrent use.
        self._tokenizer_lock = threading.Lock()

    def models(self) -> dict[str, Any]:
        """The ``GET /v1/models`` list."""
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.created,
                                            "owned_by": "agentgym", "max_context": self.backend.max_context}]}

    def chat(self, raw: bytes) -> dict[str, Any]:
        """A ``POST /v1/chat/completions`` body in, a ``chat.completion`` object out (``APIError`` on bad input)."""
        with self._tokenizer_lock:
            request = parse_chat_request(raw, self.backend.tokenizer, self.backend.max_context, [self.model_name],
                                         self.default_max_tokens)
        generation = self.batcher.submit(request)
        with self._tokenizer_lock:
            return build_completion(request, generation, self.backend.tokenizer)


def make_handler(app: ChatApp) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``app``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive for clients that reuse connections; every reply has a length
        server_version = "agentgym-openai/1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == f"{API_ROOT}/models":
                self._send(200, app.models())
            elif path in ("/health", f"{API_ROOT}/health"):
                self._send(200, {"status": "ok"})
            else:
                self._send_error(APIError(404, f"Unknown route GET {path}.", kind="not_found_error"))

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0].rstrip("/")
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length > 0 else b""  # read even on a 404, so keep-alive stays in sync
            if path != f"{API_ROOT}/chat/completions":
                self._send_error(APIError(404, f"Unknown route POST {path}.", kind="not_found_error"))
                return
            try:
                self._send(200, app.chat(raw))
            except APIError as exc:
                self._send_error(exc)
            except Exception as exc:  # a backend failure is the server's fault: 500, and the server stays up
                self._send_error(APIError(500, f"Generation failed: {type(exc).__name__}: {exc}",
                                          kind="server_error"))

        def _send_error(self, exc: APIError) -> None:
            self._send(exc.status, exc.body())

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout); nothing to tell it

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            if app.log_requests:
                super().log_message(format, *args)

    return Handler


def make_server(backend: LLMBackend, host: str = "127.0.0.1", port: int = 8000, *, model_name: str = "smollm2",
                **app_kwargs: Any) -> ThreadingHTTPServer:
    """A bound, not yet serving, HTTP server (``port=0`` picks a free port; see ``server_address``)."""
    httpd = ThreadingHTTPServer((host, port), make_handler(ChatApp(backend, model_name, **app_kwargs)))
    httpd.daemon_threads = True
    return httpd


def serve(backend: LLMBackend, host: str = "127.0.0.1", port: int = 8000, *, model_name: str = "smollm2",
          **app_kwargs: Any) -> None:
    """Serve ``backend`` until interrupted, printing the bound address (with the real port when ``port=0``).

    Args:
        backend: any ``LLMBackend``.
        host: interface to bind.
        port: TCP port (0: any free port).
        model_name: the model id clients must send.
        **app_kwargs: ``ChatApp`` options (``max_batch``, ``window_s``, ``default_max_tokens``, ``log_requests``).
    """
    httpd = make_server(backend, host, port, model_name=model_name, **app_kwargs)
    bound_host, bound_port = httpd.server_address[:2]
    print(f"agentgym OpenAI-compatible server: model {model_name!r} listening on "
          f"http://{bound_host}:{bound_port}{API_ROOT}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m policies.llm.server``: serve a local model over the OpenAI API."""
    parser = argparse.ArgumentParser(prog="python -m policies.llm.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2 (the embedded default) or a model directory")
    parser.add_argument("--served-name", default=None, help="the model id clients send (default: --model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on startup)")
    parser.add_argument("--device", default=None, help="backend device (default: the backend's choice)")
    parser.add_argument("--max-context", type=int, default=None, help="cap on prompt + reply tokens")
    parser.add_argument("--max-batch", type=int, default=8, help="requests per generate call (1: no batching)")
    parser.add_argument("--batch-window-ms", type=float, default=5.0, help="how long a batch waits for company")
    parser.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens when a request has none")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--log-requests", action="store_true", help="log each request to stderr")
    args = parser.parse_args(argv)
    from policies.llm.hf import HFBackend  # torch loads only when a server really starts

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # on a shared CPU, fewer threads than cores avoids spin-wait stalls

    backend_kwargs = {k: v for k, v in (("device", args.device), ("max_context", args.max_context)) if v is not None}
    backend = HFBackend(args.model, **backend_kwargs)
    serve(backend, args.host, args.port, model_name=args.served_name or args.model, max_batch=args.max_batch,
          window_s=args.batch_window_ms / 1000, default_max_tokens=args.default_max_tokens,
          log_requests=args.log_requests)


if __name__ == "__main__":
    main()
