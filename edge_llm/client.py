"""The CLI's client side: `edge-llm chat` and `edge-llm summarize` against a running daemon.
A daemon that is not there is a one-line message, never a traceback; one still loading its
model is waited for (--wait); a summary job is followed through daemon restarts (the job
survives them in SQLite)."""

from __future__ import annotations

import http.client
import io
import json
import math
import re
import select
import ssl
import sys
import time
import urllib.parse
from collections.abc import Iterator

RETRY_S = 1.0
STARTING_S = 5.0  # `edge-llm serve &` listens ~1 s after it starts: with --wait, a refused try is retried this long
SEND_BYTES = 1 << 16  # a body goes out in parts of this size, watching for an early answer between them
MiB = 1 << 20
FLAG_PARAMS = {"model", "temperature", "top_p", "max_tokens", "seed"}  # a refusal naming one refuses every question


class Unreachable(Exception):
    """No daemon answers at the URL (refused, reset, timed out)."""

    code: str | None = None  # none answered: no code


class Unavailable(Unreachable):
    """A daemon answered, but cannot serve: loading its model, draining, or failed (a 503)."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code  # the daemon's phase or error code: loading, draining, failed


def _clock(s: float) -> str:
    return f"{int(s // 60)}:{int(s % 60):02d}"


class Progress:
    """A progress line with elapsed time and an estimate of the time left in this round, from
    the pace since the round was first seen."""

    def __init__(self, out=None, width: int = 30):
        self.out, self.width = out or sys.stderr, width  # looked up now: a default bound at import outlives a redirect
        self.started = time.monotonic()
        self.mark: tuple[int, float, float] | None = None  # (level, time, done) when the round was first seen

    def line(self, done: float, total: int, level: int, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        if self.mark is None or self.mark[0] != level:
            self.mark = (level, now, done)
        _, t0, d0 = self.mark
        rate = (done - d0) / (now - t0) if now - t0 > 0 else 0.0
        left = f"~{_clock((total - done) / rate)} left" if rate > 0 and now - t0 >= 2 else "estimating…"
        filled = int(self.width * min(1.0, done / max(1, total)))
        stage = "parts" if level == 0 else f"combining, round {level}"
        return (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {round(done, 1):g}/{total} {stage} · "
            f"{_clock(now - self.started)} elapsed · {left}"
        )

    def show(self, done: float, total: int, level: int) -> None:
        print(f"\r{self.line(done, total, level)}   ", end="", file=self.out, flush=True)


def as_text(s: str) -> str:
    """s as UTF-8 can carry it: Python stands in for bytes that are no text (a file name, an
    argument) with lone surrogates, which no JSON body, header or URL can hold; they become '?'."""
    return s.encode("utf-8", "replace").decode("utf-8")


def not_ready_message(url: str, e: Unreachable, alternative: str = "") -> str:
    if isinstance(e, Unavailable):  # a daemon answered: it needs no starting
        return f"the daemon at {url} {e}"
    return f"no daemon answers at {url} ({e}); start one with `edge-llm serve`{alternative}"


def chat(args) -> int:
    """Lines from stdin as questions; the answers stream to stdout. Exits 1 when a question was refused."""
    import openai

    try:
        wait_until_ready(Daemon(args.url, args.api_key), args.wait)
    except Unreachable as e:
        print(f"edge-llm chat: {not_ready_message(args.url, e)}", file=sys.stderr)
        return 1
    client = openai.OpenAI(base_url=args.url.rstrip("/") + "/v1", api_key=args.api_key or "none", max_retries=2)
    try:
        model = args.model_id or client.models.list().data[0].id
    except openai.APIConnectionError as e:
        print(f"edge-llm chat: {not_ready_message(args.url, Unreachable(_why(e)))}", file=sys.stderr)
        return 1
    except openai.APIStatusError as e:  # 401 without the key
        print(f"edge-llm chat: the daemon at {args.url} answered {e.status_code}: {_why(e)}", file=sys.stderr)
        return 1
    options = {
        k: v
        for k, v in (
            ("temperature", args.temperature),
            ("top_p", args.top_p),
            ("max_tokens", args.max_tokens),
            ("seed", args.seed),
        )
        if v is not None
    }
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print("edge-llm chat: an empty line or Ctrl-D ends, Ctrl-C stops an answer", file=sys.stderr)
    return _converse(client, model, messages, options, args.url)


def _converse(client, model: str, messages: list[dict], options: dict, url: str) -> int:
    import openai

    num_refused = 0
    for line in _questions(sys.stdin):
        if not line:
            break
        messages.append({"role": "user", "content": line})
        try:
            reply = _stream_reply(client, model, messages, options)
        except openai.APIConnectionError as e:
            print(f"\nedge-llm chat: lost the daemon at {url} ({_why(e)})", file=sys.stderr)
            return 1
        except openai.APIStatusError as e:
            print(f"\nedge-llm chat: {e.status_code}: {_why(e)}", file=sys.stderr)
            messages.pop()
            if e.param in FLAG_PARAMS:  # refused for an option of ours: so would every question be
                return 1
            num_refused += 1
            continue
        if reply is None:  # stopped: the exchange is left out of what the model sees next
            messages.pop()
        else:
            messages.append({"role": "assistant", "content": reply})
    return 1 if num_refused else 0


def _questions(stdin) -> Iterator[str]:
    """stdin's lines, stripped; bytes that are no text in its encoding become U+FFFD (left as
    Python's lone surrogates they cannot go out as JSON)."""
    if isinstance(stdin, io.TextIOWrapper):
        stdin.reconfigure(errors="replace")
    for line in stdin:
        yield line.strip()


def _stream_reply(client, model: str, messages: list[dict], options: dict) -> str | None:
    reply = ""
    # a person at the prompt: interactive however long the conversation (unmarked, a long prompt is a document)
    stream = client.chat.completions.create(
        model=model, messages=messages, stream=True, extra_body={"priority": "interactive"}, **options
    )
    try:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                reply += chunk.choices[0].delta.content
                print(chunk.choices[0].delta.content, end="", flush=True)
    except KeyboardInterrupt:  # closing the stream cancels the request on the server
        stream.close()
        print("\n[stopped]", flush=True)
        return None
    print()
    return reply


def _why(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    cause = e.__cause__ or e.__context__
    return str(cause or e).splitlines()[0][:200]


class Daemon:
    """Plain HTTP to the daemon's summaries and status API."""

    def __init__(self, url: str, api_key: str = ""):
        parts = urllib.parse.urlsplit(url)
        self.is_https = parts.scheme == "https"
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or (443 if self.is_https else 80)
        self.prefix = parts.path.rstrip("/")  # a daemon behind a proxy, at a path of its own
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _conn(self, timeout: float) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.is_https else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = self._conn(60)
        try:
            conn.putrequest(method, self.prefix + path)
            for key, value in {**self.headers, **(headers or {}), **_length(body)}.items():
                conn.putheader(key, value)
            conn.endheaders()
            _send(conn, body or b"")
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"{}")
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise Unreachable(str(e) or type(e).__name__) from None
        finally:
            conn.close()
        if resp.status == 503:
            error = data.get("error", {})
            raise Unavailable(f"answered 503: {error.get('message', '')}", error.get("code"))
        return resp.status, data

    def phase(self) -> tuple[str, str]:
        """(phase, detail) from /api/status; ("ready", "") where there is none to read (another
        server, a missing key): the request itself then says what is wrong."""
        status, body = self.request("GET", "/api/status")
        if status != 200 or "phase" not in body:
            return "ready", ""
        return str(body["phase"]), str(body.get("detail", ""))

    def events(self, job_id: str) -> Iterator[tuple[str, dict]]:
        """(event, data) from the job's SSE stream until it ends; Unreachable if it cannot start."""
        conn = self._conn(120)
        try:
            conn.request("GET", f"{self.prefix}/api/summaries/{job_id}/events", headers=self.headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise Unreachable(str(e) or type(e).__name__) from None
        if resp.status != 200:
            conn.close()
            raise Unreachable(f"HTTP {resp.status}")
        kind = "message"
        try:
            for raw in resp:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    yield kind, json.loads(line[6:])
                    kind = "message"
        except (OSError, http.client.HTTPException, ValueError):
            return  # the daemon went away mid-stream: the caller reconnects
        finally:
            conn.close()


def _length(body: bytes | None) -> dict:
    return {} if body is None else {"Content-Length": str(len(body))}


def _send(conn: http.client.HTTPConnection, body: bytes) -> None:
    """The body in parts, stopping once the daemon has answered: it refuses a body over its
    limit (413) from the headers and closes, and a body sent on into the closed connection
    resets it, losing that answer."""
    view = memoryview(body)
    # over TLS the socket is readable with TLS 1.3's session tickets too, and its data cannot be
    # peeked at: no early look there (a review's finding: a 1 MB upload stalled after 64 KiB)
    watch = not isinstance(conn.sock, ssl.SSLSocket)
    try:
        for start in range(0, len(body), SEND_BYTES):
            if watch and select.select([conn.sock], [], [], 0)[0]:
                return
            conn.sock.sendall(view[start : start + SEND_BYTES])
    except (BrokenPipeError, ConnectionResetError):
        return  # its answer may still be there to read


def _not_ready(daemon: Daemon) -> Unreachable | None:
    """Why the daemon cannot serve now; None when it can."""
    try:
        phase, detail = daemon.phase()
    except Unreachable as e:
        return e
    if phase == "failed":
        return Unavailable(f"could not start ({detail})", phase)
    return None if phase == "ready" else Unavailable(f"is {phase} ({detail})", phase)


def wait_until_ready(daemon: Daemon, wait_s: float) -> None:
    """Return once the daemon can serve; while it starts or loads its model, wait up to wait_s
    with a line saying so. Unreachable when none answers within STARTING_S (a wrong URL is
    said soon), Unavailable when one answered but is not ready in time, or failed."""
    started, answered, waited = time.monotonic(), False, False
    while (why := _not_ready(daemon)) is not None:
        if answered and not isinstance(why, Unavailable):  # gone while loading: a crash, or a restart
            why = Unavailable(f"stopped answering before it was ready ({why}); its log says why")
        answered = isinstance(why, Unavailable)
        limit = wait_s if answered else min(wait_s, STARTING_S)
        if why.code == "failed" or time.monotonic() - started >= limit:
            _end_line(waited)
            raise Unavailable(f"{why}{_waited(wait_s)}", why.code) if answered else why
        line = f"the daemon {why}" if answered else f"no daemon answers yet ({why})"
        print(f"\r[{line}; waiting up to {limit:.0f} s]   ", end="", file=sys.stderr, flush=True)
        waited = True
        time.sleep(RETRY_S)
    _end_line(waited)


def _end_line(waited: bool) -> None:
    if waited:  # the waiting line stays, the next output starts below it
        print(file=sys.stderr)


def _waited(wait_s: float) -> str:
    return f" after {wait_s:.0f} s (--wait)" if wait_s else "; --wait S waits for it"


def summarize(args, name: str, data: bytes, kind: str) -> int:
    daemon = Daemon(args.url, args.api_key)
    try:
        wait_until_ready(daemon, args.wait)
    except Unreachable as e:
        print(f"edge-llm summarize: {not_ready_message(args.url, e, ', or use --in-process')}", file=sys.stderr)
        return 1
    try:
        status, job = daemon.request(
            "POST", f"/api/summaries?filename={urllib.parse.quote(as_text(name))}", data, {"Content-Type": kind}
        )
    except Unreachable as e:
        print(f"edge-llm summarize: the daemon at {args.url} did not take the document ({e})", file=sys.stderr)
        return 1
    if status != 202:
        print(f"edge-llm summarize: {_refusal(args.url, status, job, len(data))}", file=sys.stderr)
        return 1
    progress = Progress()
    job = follow(daemon, job, progress, args.wait)
    if job is not None and job.get("progress"):  # the last state, also when no event showed one (a quick job)
        p = job["progress"]
        progress.show(p["chunks_done"] + p.get("chunks_partial", 0), p["chunks_total"], job.get("level", 0))
    print(file=sys.stderr)
    if job is None:
        return 1
    if job.get("status") != "done":
        print(f"edge-llm summarize: the job ended {job.get('status')}: {job.get('error')}", file=sys.stderr)
        return 1
    print(job["result"])
    return 0


def _refusal(url: str, status: int, body: dict, num_bytes: int) -> str:
    error = body.get("error", {}) if isinstance(body, dict) else {}
    message = str(error.get("message", body))
    if status != 413 or not (error.get("code") == "request_too_large" or "max_document_bytes" in message):
        return f"{status}: {message}"  # other refusals (a PDF of too many pages too) say what they mean
    size = f"the document is {math.ceil(num_bytes / MiB * 10) / 10:.1f} MiB"  # rounded up: over, it shows over
    limits = re.findall(r"\d{4,}", message)  # the daemon's limit in bytes, last in its 413's message
    if not limits:
        return f"{size}, more than the daemon at {url} accepts ({message})"
    # rounded down: a document of that size is taken (the HTTP server's own cap is a little higher)
    most = math.floor(int(limits[-1]) / MiB * 10) / 10
    return f"{size}, the daemon at {url} accepts at most {most:.1f} MiB (server.max_document_bytes)"


def follow(daemon: Daemon, job: dict, progress: Progress, wait_s: float) -> dict | None:
    """The job's events to its end, reconnecting while the daemon restarts (up to wait_s
    without an answer). None when the job was deleted or the daemon stayed away."""
    lost_since = None
    while True:
        try:
            for kind, data in daemon.events(job["id"]):
                if kind == "error":
                    if "deleted" in data.get("message", ""):
                        print("\nedge-llm summarize: the job was deleted", file=sys.stderr)
                        return None
                    break  # the daemon is shutting down: wait for it to come back
                job, lost_since = data, None
                p = job["progress"]
                progress.show(p["chunks_done"] + p.get("chunks_partial", 0), p["chunks_total"], job["level"])
                if kind == "done":
                    return job
            raise Unreachable("the event stream ended")
        except Unreachable as e:
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > wait_s:
                print(
                    f"\nedge-llm summarize: the daemon has not answered for {wait_s:.0f} s ({e}); the job "
                    f"{job['id']} goes on when it is back: GET /api/summaries/{job['id']}",
                    file=sys.stderr,
                )
                return None
            state = f"the daemon {e}" if isinstance(e, Unavailable) else f"the daemon is not answering ({e})"
            print(f"\r[{state}; waiting for it]   ", end="", file=sys.stderr, flush=True)
            time.sleep(RETRY_S)
            try:
                status, current = daemon.request("GET", f"/api/summaries/{job['id']}")
            except Unreachable:
                continue
            if status == 404:
                print(f"\nedge-llm summarize: the job {job['id']} no longer exists", file=sys.stderr)
                return None
            if current.get("status") in ("done", "error"):
                return current
