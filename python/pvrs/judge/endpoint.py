"""A judge behind any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, llama.cpp
server, hosted APIs). Requests run `concurrency` at a time; 429s, 5xx replies, timeouts and
dropped connections are retried with exponential backoff (a Retry-After header wins), and
every failure is one `JudgeError` naming the endpoint. A reply that holds no score (a
`REFUSAL`, too little probability on the numbers) is a None score, not a failure."""

from __future__ import annotations

import email.utils
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx

from pvrs.errors import InputError, JudgeError
from pvrs.jsonio import decode
from pvrs.judge.numbers import DEFAULT_MODE, stated_score, weighted_score

URL_ENV, MODEL_ENV, KEY_ENV = "PVRS_JUDGE_URL", "PVRS_JUDGE_MODEL", "OPENAI_API_KEY"
TOP_LOGPROBS = 20  # the most OpenAI's API returns; enough to cover the plausible numbers
# Reply tokens asked for: a number stated in several tokens is read whole when an endpoint
# sends no logprobs (the logprob score reads the first token either way).
MAX_TOKENS = 4
# Anthropic persona_vectors' judge (judge.py): one token with its top logprobs, seed 0.
PERSONA_VECTORS_REQUEST: dict[str, Any] = {"max_tokens": 1, "seed": 0}


@dataclass(frozen=True)
class EndpointJudge:
    """`url` is the API base (`http://host:8000/v1`) or the full `/chat/completions` URL.
    `backoff` is the first wait between retries in seconds, doubled per retry up to
    `max_wait`."""

    url: str
    model: str
    api_key: str | None = None
    concurrency: int = 8
    timeout: float = 60.0
    retries: int = 5
    backoff: float = 1.0
    max_wait: float = 60.0
    logprobs: bool = True  # False for endpoints that refuse them: the stated number is read
    max_tokens: int = MAX_TOKENS
    seed: int | None = None

    @classmethod
    def from_env(cls, url: str | None, model: str | None, api_key: str | None, **options: Any) -> EndpointJudge:
        """Flags first, then $PVRS_JUDGE_URL, $PVRS_JUDGE_MODEL and $OPENAI_API_KEY."""
        flag_url, url = url, url or os.environ.get(URL_ENV)
        model = model or os.environ.get(MODEL_ENV)
        if not url:
            raise InputError(f"no judge endpoint: pass --judge-url URL (e.g. http://localhost:8000/v1) or set ${URL_ENV}")
        check_url(url, "--judge-url" if flag_url else f"${URL_ENV}")
        if not model:
            raise InputError(f"no judge model for {url}: pass --judge-model NAME or set ${MODEL_ENV}")
        judge = cls(url, model, api_key or os.environ.get(KEY_ENV), **options)
        if judge.timeout <= 0 or judge.retries < 0:
            raise InputError(f"--timeout must be > 0 and --retries >= 0, got {judge.timeout:g} and {judge.retries}")
        return judge

    @property
    def id(self) -> str:
        # The served model decides the scores, not the server it runs on: moving the same
        # model elsewhere keeps its cached scores. Other requests (a preset's) are other scores.
        if (self.max_tokens, self.seed) == (MAX_TOKENS, None):
            return f"endpoint:{self.model}"
        return f"endpoint:{self.model}?max_tokens={self.max_tokens}&seed={self.seed}"

    @property
    def endpoint(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"

    def score(
        self, prompts: Sequence[str], on_score: Callable[[int, float | None], object] | None = None,
        mode: str = DEFAULT_MODE,
    ) -> list[float | None]:
        """`mode` scores of `prompts`, in order (None: no score); `on_score(i, score)` hears each as it
        arrives (on the calling thread). The first failure, or Ctrl-C, returns at once: the
        requests not yet sent are dropped and those in flight abandoned on daemon threads (a
        thread pool's are joined at exit, which kept Ctrl-C waiting up to `timeout`)."""
        scores: list[float | None] = [None] * len(prompts)
        stop = threading.Event()
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        done: queue.SimpleQueue[tuple[int, float | None, BaseException | None]] = queue.SimpleQueue()
        for i in range(len(prompts)):
            todo.put(i)
        client = self._client()

        def work() -> None:
            while not stop.is_set():
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put((i, self._score_one(client, prompts[i], stop, mode), None))
                except BaseException as exc:  # handed to the calling thread, which raises it
                    done.put((i, None, exc))
                    return

        workers = [threading.Thread(target=work, name="pvrs-judge", daemon=True)
                   for _ in range(min(self.concurrency, len(prompts)))]
        for worker in workers:
            worker.start()
        try:
            for _ in prompts:
                i, scores[i], error = done.get()
                if error is not None:
                    raise error
                if on_score is not None:
                    on_score(i, scores[i])
        except BaseException:
            stop.set()
            # The client is closed once the abandoned requests end, not under them.
            threading.Thread(target=_close_after, args=(workers, client), daemon=True).start()
            raise
        _close_after(workers, client)
        return scores

    def complete(self, messages: Sequence[Mapping[str, str]], max_tokens: int) -> str:
        """The reply text to a conversation, at temperature 0 (one request, retried as a
        score's): a generator behind the judge's endpoint (`pvrs trait --describe`)."""
        body: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in messages], "temperature": 0,
                                "max_tokens": max_tokens}
        if self.seed is not None:
            body["seed"] = self.seed
        with self._client() as client:
            content = self._post(client, body, threading.Event())
        try:
            text = decode(content, f"endpoint {self.endpoint}")["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError(text)
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeError(
                f"endpoint {self.endpoint}: malformed reply, not an OpenAI chat completion: {_snippet(content)}"
            ) from None
        return text

    def _client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(timeout=self.timeout, headers=headers, limits=httpx.Limits(max_connections=self.concurrency))

    def _score_one(self, client: httpx.Client, prompt: str, stop: threading.Event, mode: str) -> float | None:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        if self.logprobs:
            body.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        return self._read_score(self._post(client, body, stop), mode)

    def _post(self, client: httpx.Client, body: dict[str, Any], stop: threading.Event) -> bytes:
        why = ""
        for attempt in range(self.retries + 1):
            wait = self.backoff * 2**attempt
            try:
                reply = client.post(self.endpoint, json=body)
            except httpx.TimeoutException:
                why = f"no reply within {self.timeout:g}s"
            except httpx.TransportError as exc:
                why = f"cannot connect ({exc})"
            else:
                if reply.status_code == 200:
                    return reply.content
                if reply.status_code != 429 and reply.status_code < 500:
                    raise JudgeError(f"judge endpoint {self.endpoint}: HTTP {reply.status_code} {_snippet(reply.content)}{_hint(reply.status_code)}")
                why = f"HTTP {reply.status_code}"
                wait = _retry_after(reply.headers.get("retry-after"), wait)
            if attempt < self.retries and stop.wait(min(self.max_wait, wait)):
                break  # the run is ending: nobody reads this reply
        raise JudgeError(
            f"judge endpoint {self.endpoint}: {why} after {self.retries + 1} attempts; "
            "check the server, or raise --timeout / --retries"
        )

    def _read_score(self, content: bytes, mode: str) -> float | None:
        """The `mode` score of the first token's top logprobs when the server sends them,
        else of the answer the reply states; None (no score) for a `REFUSAL`, words, or too
        little mass on the counted tokens. A reply that is no chat completion is an error."""
        try:
            choice = decode(content, f"judge endpoint {self.endpoint}")["choices"][0]
            text = choice["message"]["content"]
            if text is not None and not isinstance(text, str):
                raise TypeError(text)
            logprobs = (choice.get("logprobs") or {}).get("content") or []
            top = [(t["token"], _probability(t["logprob"])) for t in logprobs[0]["top_logprobs"]] if logprobs else None
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise JudgeError(
                f"judge endpoint {self.endpoint}: malformed reply, not an OpenAI chat completion: {_snippet(content)}"
            ) from None
        if top is not None:  # as persona_vectors: the logprobs decide, whatever token was sampled
            return weighted_score(top, mode)
        return None if text is None else stated_score(text, mode)


def check_url(url: str, where: str) -> None:
    """An http(s) URL with a host, checked before any request (httpx would raise
    `InvalidURL` from a worker thread)."""
    example = "pass the API base, e.g. http://localhost:8000/v1"
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise InputError(f"{where} {url!r} is not a URL ({exc}); {example}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InputError(f"{where} {url!r} is not an http:// or https:// URL with a host; {example}")


def _close_after(workers: Sequence[threading.Thread], client: httpx.Client) -> None:
    for worker in workers:
        worker.join()
    client.close()


def _probability(logprob: object) -> float:
    """exp(logprob); a logprob that is no number, NaN or +inf is a malformed reply (it would
    make the score NaN), one a rounding error above 0 counts as 0."""
    if isinstance(logprob, bool) or not isinstance(logprob, (int, float)) or math.isnan(logprob) or logprob == math.inf:
        raise TypeError(logprob)
    return math.exp(min(logprob, 0.0))


def _retry_after(header: str | None, default: float) -> float:
    """Seconds from a Retry-After header (seconds or an HTTP date), else `default`."""
    if not header:
        return default
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return default
    return max(0.0, when.timestamp() - time.time())


def _snippet(content: bytes) -> str:
    text = content.decode("utf-8", errors="replace").strip()
    return repr(text[:160] + ("…" if len(text) > 160 else ""))


def _hint(status: int) -> str:
    if status in (401, 403):
        return f"; check --api-key or ${KEY_ENV}"
    if status == 400:
        return "; if the endpoint refuses logprobs, pass --no-logprobs"
    if status == 404:
        return "; check --judge-url (the API base, e.g. http://host:8000/v1) and --judge-model"
    return ""
