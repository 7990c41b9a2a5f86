"""The CLI's client side: `edge-llm chat` and `edge-llm summarize` against a running daemon.
A daemon that is not there is a one-line message, never a traceback; a summary job is
followed through daemon restarts (the job survives them in SQLite)."""

from __future__ import annotations

import http.client
import json
import sys
import time
import urllib.parse
from collections.abc import Iterator

RETRY_S = 1.0


class Unreachable(Exception):
    """No daemon answers at the URL (refused, reset, or 503 while it loads or drains)."""


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


def chat(args) -> int:
    """Lines from stdin as questions; the answers stream to stdout."""
    import openai

    client = openai.OpenAI(base_url=args.url.rstrip("/") + "/v1", api_key=args.api_key or "none", max_retries=2)
    try:
        model = args.model_id or client.models.list().data[0].id
    except openai.APIConnectionError as e:
        print(
            f"edge-llm chat: no daemon answers at {args.url} ({_why(e)}); start one with `edge-llm serve`",
            file=sys.stderr,
        )
        return 1
    except openai.APIStatusError as e:  # 503 while it loads or drains; 401 without the key
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
    for line in sys.stdin:
        if not line.strip():
            break
        messages.append({"role": "user", "content": line.strip()})
        try:
            reply = _stream_reply(client, model, messages, options)
        except openai.APIConnectionError as e:
            print(f"\nedge-llm chat: lost the daemon at {args.url} ({_why(e)})", file=sys.stderr)
            return 1
        except openai.APIStatusError as e:
            print(f"\nedge-llm chat: {e.status_code}: {_why(e)}", file=sys.stderr)
            messages.pop()
            continue
        if reply is None:  # stopped: the exchange is left out of what the model sees next
            messages.pop()
        else:
            messages.append({"role": "assistant", "content": reply})
    return 0


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
    """Plain HTTP to the daemon's summaries API."""

    def __init__(self, url: str, api_key: str = ""):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _conn(self, timeout: float) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = self._conn(60)
        try:
            conn.request(method, path, body, {**self.headers, **(headers or {})})
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"{}")
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise Unreachable(str(e) or type(e).__name__) from None
        finally:
            conn.close()
        if resp.status == 503:
            raise Unreachable(data.get("error", {}).get("message", "503"))
        return resp.status, data

    def events(self, job_id: str) -> Iterator[tuple[str, dict]]:
        """(event, data) from the job's SSE stream until it ends; Unreachable if it cannot start."""
        conn = self._conn(120)
        try:
            conn.request("GET", f"/api/summaries/{job_id}/events", headers=self.headers)
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


def summarize(args, name: str, data: bytes, kind: str) -> int:
    daemon = Daemon(args.url, args.api_key)
    try:
        status, job = daemon.request(
            "POST", f"/api/summaries?filename={urllib.parse.quote(name)}", data, {"Content-Type": kind}
        )
    except Unreachable as e:
        print(
            f"edge-llm summarize: no daemon answers at {args.url} ({e}); start one with `edge-llm serve`, "
            "or use --in-process",
            file=sys.stderr,
        )
        return 1
    if status != 202:
        print(f"edge-llm summarize: {status}: {job.get('error', {}).get('message', job)}", file=sys.stderr)
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
            print(f"\r[the daemon is not answering ({e}); waiting for it]   ", end="", file=sys.stderr, flush=True)
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
