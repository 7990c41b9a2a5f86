"""The attack run of issue 22, kept: hostile input, a fuzzer, disconnects, a flood, slow
connections, summary jobs with deletes and kill -9, cross-site requests, and SIGTERM under
load, against a daemon this script starts on a loopback port (and kills and restarts).

    .venv/bin/python tools/attack.py              # everything (about 5 minutes on 2 cores)
    .venv/bin/python tools/attack.py --quick      # fewer of each (about 1.5 minutes)
    .venv/bin/python tools/attack.py --phases schemas,bad_requests --json out.json

It counts crashes (the daemon died), 5xx responses, errors not in OpenAI's shape, invalid
input accepted, lost jobs (created, not deleted, gone), stuck jobs (not ended in time),
chunks summarized other than once, leaks (requests, KV, descriptors or HTTP slots still held
once idle), and slow answers (/health, the page or a 429 later than 1 s under a flood). The
exit status is 0 only when every count is 0. Loopback only: it never sends anything elsewhere.
"""

from __future__ import annotations

import argparse
import http.client as httplib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HOST = "127.0.0.1"
NO_EOS = {"0": -100, "2": -100, "4": -100}  # SmolLM2's end-of-generation tokens: run to max_tokens
HI = [{"role": "user", "content": "Hi"}]
PHASES = ("schemas", "bad_requests", "cross_site", "fuzz", "disconnects", "flood", "jobs", "drain")
DRAIN_S = 3.0


class Report:
    def __init__(self):
        self.counts: Counter = Counter()
        self.notes: list[str] = []
        self.num_requests = 0

    def fail(self, kind: str, what: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= 5:
            self.notes.append(f"{kind}: {what}")

    def check_response(self, what: str, status: int, body: bytes) -> None:
        """Every answer: no 5xx (503 with Retry-After is honest, and allowed), errors in OpenAI's shape."""
        self.num_requests += 1
        if status == 0:
            self.fail("no_answer", what)
        elif status >= 500 and status != 503:
            self.fail("5xx", f"{what} -> {status} {body[:120]!r}")
        elif status >= 400 and not is_openai_error(body):
            self.fail("not_openai_shaped", f"{what} -> {status} {body[:120]!r}")


def is_openai_error(body: bytes) -> bool:
    try:
        err = json.loads(body)["error"]
        return isinstance(err["message"], str) and isinstance(err["type"], str)
    except (ValueError, KeyError, TypeError):
        return False


class Daemon:
    """The daemon as a child process on a free loopback port, with its own state directory."""

    def __init__(self, state_dir: Path, *sets: str):
        self.state_dir, self.sets = state_dir, sets
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log: list[str] = []

    def start(self, timeout: float = 120) -> None:
        cmd = [
            sys.executable,
            "-m",
            "edge_llm",
            "serve",
            "--host",
            HOST,
            "--port",
            "0",
            f"--set=daemon.state_dir={self.state_dir}",
            f"--set=daemon.drain_timeout_s={DRAIN_S}",
            *(f"--set={s}" for s in self.sets),
        ]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        port = []

        def read(proc=self.proc):
            for line in proc.stderr:
                self.log.append(line)
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
                if m:
                    port.append(int(m.group(1)))

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if port and get(port[0], "/health", timeout=5)[0] == 200:
                self.port = port[0]
                return
            time.sleep(0.2)
        raise RuntimeError("the daemon did not become ready:\n" + "".join(self.log[-20:]))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def num_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def request(port: int, method: str, path: str, body=None, headers=None, timeout: float = 60):
    """(status, headers, body, seconds); status 0 when the connection failed."""
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    t0 = time.monotonic()
    conn = httplib.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, time.monotonic() - t0
    except (OSError, httplib.HTTPException):
        return 0, {}, b"", time.monotonic() - t0
    finally:
        conn.close()


def get(port: int, path: str, timeout: float = 60):
    return request(port, "GET", path, timeout=timeout)


def raw(port: int, data: bytes, timeout: float = 30) -> tuple[int, bytes]:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(data)
            resp = httplib.HTTPResponse(s)
            resp.begin()
            return resp.status, resp.read()
    except (OSError, httplib.HTTPException):
        return 0, b""


def chat_body(**fields) -> dict:
    return {"messages": HI, "max_tokens": 4, **fields}


# -- phases -------------------------------------------------------------------------------------------


def schema_cases() -> list[dict]:
    deep = {"type": "string"}
    for _ in range(60):
        deep = {"type": "object", "properties": {"a": deep}, "required": ["a"]}
    return [
        {"type": "string", "maxLength": 30000},
        {"type": "string", "minLength": 30000},
        {"enum": [f"v{i}" for i in range(50_000)]},
        {"type": "array", "items": {}, "minItems": 1_000_000},
        {"type": "array", "items": {"type": "string"}, "maxItems": 100_000},
        {"type": "integer", "minimum": 1e308},
        {"type": "number", "maximum": -1e308},
        {"type": "string", "pattern": "^a{0,30000}$"},
        {"type": "string", "pattern": "(" * 5000 + ")" * 5000},
        {"type": "string", "pattern": "x" * 100_000},
        deep,
        {"$ref": "#"},
        {"$ref": "#/definitions/nope"},
        {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 200} for i in range(2000)}},
        {"anyOf": [{"const": "x" * 1000}] * 3000},
        {"type": "object", "minProperties": 10**9},
        {"type": "string", "format": "date-time", "maxLength": 10**9},
        {"type": ["string"] * 10_000},
    ]


def phase_schemas(d: Daemon, r: Report, quick: bool) -> None:
    for i, schema in enumerate(schema_cases()):
        fmt = {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema}}
        status, _, body, took = request(d.port, "POST", "/v1/chat/completions", chat_body(response_format=fmt))
        r.check_response(f"schema {i}", status, body)
        if took > 2.0:
            r.fail("slow", f"schema {i} took {took:.1f} s ({status})")
        if not d.alive:
            r.fail("crash", f"schema {i}: the daemon died")
            d.start()


def bad_request_cases() -> list[tuple[str, bytes, dict | None, set[int]]]:
    """(name, raw body, query/extra headers, statuses allowed) for POST /v1/chat/completions."""
    j = {"Content-Type": "application/json"}
    cases = [
        ("deep json", b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", j, {400}),
        ("lone surrogate", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', j, {400}),
        (
            "superscript key",
            '{"messages": [{"role": "user", "content": "a"}], "logit_bias": {"²": 1}}'.encode(),
            j,
            {400},
        ),
        (
            "5000-digit key",
            b'{"messages": [{"role": "user", "content": "a"}], "logit_bias": {"' + b"9" * 5000 + b'": 1}}',
            j,
            {400},
        ),
        ("invalid utf-8", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', j, {400}),
        ("not an object", b"[1, 2]", j, {400}),
        ("not json", b"{", j, {400}),
        ("empty", b"", j, {400}),
        ("form", b"a=b", {"Content-Type": "application/x-www-form-urlencoded"}, {415}),
        ("huge max_tokens", json.dumps(chat_body(max_tokens=10**30)).encode(), j, {200}),
        ("huge seed", json.dumps(chat_body(seed=10**30)).encode(), j, {400}),
        ("content object", json.dumps({"messages": [{"role": "user", "content": {"x": 1}}]}).encode(), j, {400}),
        ("stop list of 5", json.dumps(chat_body(stop=["a"] * 5)).encode(), j, {400}),
        ("logprobs 21", json.dumps(chat_body(logprobs=True, top_logprobs=21)).encode(), j, {400}),
        ("n=2", json.dumps(chat_body(n=2)).encode(), j, {400}),
        ("unknown model", json.dumps(chat_body(model="nope")).encode(), j, {404}),
    ]
    for field in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty"):
        for value in ("NaN", "Infinity", "-Infinity"):
            cases.append(
                (
                    f"{field}={value}",
                    f'{{"messages": [{{"role": "user", "content": "a"}}], "max_tokens": 2, '
                    f'"{field}": {value}}}'.encode(),
                    j,
                    {400},
                )
            )
    return cases


def phase_bad_requests(d: Daemon, r: Report, quick: bool) -> None:
    for name, body, headers, allowed in bad_request_cases():
        status, _, data, _ = request(d.port, "POST", "/v1/chat/completions", body, headers)
        r.check_response(name, status, data)
        if status and status not in allowed:
            r.fail("unexpected_status", f"{name} -> {status}, expected {sorted(allowed)}")
    for path in (
        "/api/summaries?limit=%C2%B2",
        "/api/summaries?offset=%C2%B2",
        "/api/summaries?limit=0",
        "/api/summaries?offset=99999999999999999999",
        "/v1/models/%00",
        "/api/summaries/%C2%B2",
    ):
        status, _, data, _ = get(d.port, path)
        r.check_response(path, status, data)
        if status == 200 and "limit=0" in path:
            r.fail("unexpected_status", f"{path} -> 200")
    status, headers, data, _ = request(d.port, "PUT", "/v1/chat/completions", b"{}")
    r.check_response("PUT chat", status, data)
    if status != 405 or "POST" not in headers.get("allow", ""):
        r.fail("unexpected_status", f"PUT -> {status}, Allow {headers.get('allow')!r}")
    for name, data, want in (
        ("431", b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n", 431),
        ("413", b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 999999999\r\n\r\n", 413),
        ("400", b"GET /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: nope\r\n\r\n", 400),
        ("bad request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    ):
        status, body = raw(d.port, data)
        r.check_response(f"waitress {name}", status, body)
        if status != want:
            r.fail("unexpected_status", f"waitress {name} -> {status}, expected {want}")
    uploads = [
        ("empty.txt", b"", "text/plain"),
        ("x.pdf", b"%PDF-1.4 garbage", "application/pdf"),
        ("x.png", b"\x89PNG", "image/png"),
        ("x.html", b"<html>", "text/html"),
        ("x.txt", b"\xff\xfe\x00", "text/plain"),
        ("x", b"abc", ""),
        ("x.pdf", b"not a pdf", "text/plain"),
    ]
    for name, data, ctype in uploads:
        status, _, body, _ = request(
            d.port, "POST", f"/api/summaries?filename={name}", data, {"Content-Type": ctype} if ctype else {}
        )
        r.check_response(f"upload {name}", status, body)
    if not d.alive:
        r.fail("crash", "bad requests: the daemon died")
        d.start()


def phase_cross_site(d: Daemon, r: Report, quick: bool) -> None:
    evil = [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Host": "evil.example"},
        {"Host": "evil.example:8000"},
        {"Host": "127.0.0.1.evil.example"},
        {"Origin": "http://127.0.0.1.evil"},
    ]
    for headers in evil:
        for method, path, body in (
            ("POST", "/v1/chat/completions", chat_body()),
            ("POST", "/api/summaries?filename=a.txt", b"text"),
            ("DELETE", "/api/summaries/x", None),
        ):
            hdrs = {**headers, "Content-Type": "application/json" if isinstance(body, dict) else "text/plain"}
            status, _, data, _ = request(d.port, method, path, body, hdrs)
            r.check_response(f"{method} {path} {headers}", status, data)
            if status not in (401, 403):
                r.fail("cross_site_accepted", f"{method} {path} with {headers} -> {status}")


def phase_fuzz(d: Daemon, r: Report, quick: bool) -> None:
    """schemathesis over /openapi.json, every check, with its stateful phase."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "run.json"
        cmd = [
            str(Path(sys.executable).with_name("st")),
            "run",
            f"http://{HOST}:{d.port}/openapi.json",
            "--checks",
            "all",
            "--workers",
            "2",
            "--max-examples",
            "10" if quick else "40",
            "--seed",
            "1",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-time",
            "60" if quick else "240",
            "--request-timeout",
            "60",
            "--suppress-health-check",
            "all",
            "--no-color",
            "--generation-database",
            "none",
            "--report",
            "json",
            "--report-json-path",
            str(report),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        text = out.stdout + out.stderr
        n = re.search(r"(\d+) generated", text)
        r.num_requests += int(n.group(1)) if n else 0
        for line in text.splitlines():
            if re.match(
                r"^\s*(_+ |- )?(Server error|Undocumented|Response violates|API rejected|API accepted|"
                r"Missing Content-Type|Undocumented Content-Type|Unsupported methods)",
                line,
            ):
                kind = "5xx" if "Server error" in line else "fuzzer"
                r.fail(kind, f"schemathesis: {line.strip()}")
        if out.returncode not in (0, 1):
            r.fail("fuzzer", f"schemathesis exited {out.returncode}: {text[-300:]}")
        elif out.returncode == 1 and not r.counts["fuzzer"] and not r.counts["5xx"]:
            r.fail("fuzzer", "schemathesis reported failures: " + " | ".join(text.strip().splitlines()[-6:]))
        if out.returncode:
            print(text, file=sys.stderr)  # its own account of each failure
    if not d.alive:
        r.fail("crash", "fuzzing: the daemon died")
        d.start()


def health(d: Daemon) -> dict:
    status, _, body, _ = get(d.port, "/health", timeout=10)
    return json.loads(body) if status in (200, 503) else {}


def wait_idle(d: Daemon, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = health(d)
        if h and not (h.get("running") or h.get("waiting") or h.get("kv_tokens_reserved")):
            return h
        time.sleep(0.2)
    return health(d)


def stream_then_leave(port: int, read_events: int) -> None:
    body = json.dumps(chat_body(max_tokens=300, stream=True, logit_bias=NO_EOS))
    try:
        with socket.create_connection((HOST, port), timeout=30) as s:
            s.sendall(
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
            )
            seen = b""
            while seen.count(b"data: ") < read_events:
                chunk = s.recv(4096)
                if not chunk:
                    break
                seen += chunk
    except OSError:
        pass


def phase_disconnects(d: Daemon, r: Report, quick: bool) -> None:
    """Clients that leave mid-stream, and non-streaming clients that give up: nothing stays held."""
    wait_idle(d)
    fds = d.num_fds()
    n = 30 if quick else 100
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: stream_then_leave(d.port, 1 + i % 5), range(n)))
    for _ in range(3 if quick else 10):
        request(d.port, "POST", "/v1/chat/completions", chat_body(max_tokens=400, logit_bias=NO_EOS), timeout=0.5)
    r.num_requests += n
    h = wait_idle(d, 15)
    for key in ("running", "waiting", "kv_tokens_reserved"):
        if h.get(key):
            r.fail("leak", f"after {n} disconnects: {key} = {h.get(key)}")
    time.sleep(1.0)
    if d.num_fds() > fds + 8:
        r.fail("leak", f"descriptors {fds} -> {d.num_fds()} after {n} disconnects")


def phase_flood(d: Daemon, r: Report, quick: bool) -> None:
    """200 slow connections, then a 200-request flood: /health and the page answer within 1 s and
    excess requests get 429 + Retry-After within 1 s."""
    slow = []
    for _ in range(200):
        try:
            s = socket.create_connection((HOST, d.port), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            slow.append(s)
        except OSError as e:
            r.fail("slow", f"slow connection {len(slow)} refused: {e}")
            break
    results, stop = [], threading.Event()

    def flood(_):
        body = chat_body(max_tokens=48, logit_bias=NO_EOS, messages=[{"role": "user", "content": "Tell a story."}])
        status, headers, data, took = request(d.port, "POST", "/v1/chat/completions", body, timeout=120)
        results.append((status, took, headers.get("retry-after"), data))

    def probe():
        while not stop.is_set():
            for path in ("/health", "/"):
                status, _, _, took = get(d.port, path, timeout=10)
                r.num_requests += 1
                if status != 200 or took > 1.0:
                    r.fail("slow", f"{path} -> {status} in {took:.2f} s under the flood")
            time.sleep(0.2)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with ThreadPoolExecutor(200) as pool:
            list(pool.map(flood, range(200)))
    finally:
        stop.set()
        prober.join()
        for s in slow:
            s.close()
    for status, took, retry, data in results:
        r.check_response("flood", status, data)
        if status == 429 and (took > 1.0 or not retry):
            r.fail("slow", f"429 after {took:.2f} s, Retry-After {retry!r}")
    codes = Counter(s for s, *_ in results)
    r.notes.append(f"flood: {dict(codes)}")
    if not codes[429]:
        r.fail("slow", "no 429 under a 200-request flood")
    wait_idle(d)


def document(n: int, seed: int) -> bytes:
    return " ".join(
        f"Item {seed}.{i}: the pump at site {i % 11} ran {i % 90} percent for {i} hours." for i in range(n)
    ).encode()


def phase_jobs(d: Daemon, r: Report, quick: bool) -> None:
    """Summary jobs with deletes mid-job and kill -9 across them: none lost or stuck, each chunk
    summarized once; a second daemon on the same state directory refuses to start."""
    sizes = [30, 80, 12, 150, 40, 60, 20, 100, 50, 25][: 5 if quick else 10]
    jobs = []
    for i, n in enumerate(sizes):
        status, _, body, _ = request(
            d.port, "POST", f"/api/summaries?filename=doc{i}.txt", document(n, i), {"Content-Type": "text/plain"}
        )
        r.check_response("create job", status, body)
        if status == 202:
            jobs.append(json.loads(body)["id"])
    deleted = set(jobs[1::4])
    time.sleep(3)
    for job_id in deleted:
        status, _, body, _ = request(d.port, "DELETE", f"/api/summaries/{job_id}")
        r.check_response("delete job", status, body)
    second = subprocess.run(
        [sys.executable, "-m", "edge_llm", "serve", "--port", "0", f"--set=daemon.state_dir={d.state_dir}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if second.returncode == 0 or "in use" not in second.stderr:
        r.fail("shared_state", f"a second daemon on the same state dir exited {second.returncode}")
    for _ in range(1 if quick else 3):
        time.sleep(4)
        d.kill9()
        d.start()
    deadline = time.monotonic() + (240 if quick else 480)
    pending = [j for j in jobs if j not in deleted]
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            status, _, body, _ = get(d.port, f"/api/summaries/{job_id}")
            r.check_response("get job", status, body)
            if status == 404:
                r.fail("lost_job", job_id)
                pending.remove(job_id)
            elif status == 200 and json.loads(body)["status"] in ("done", "error"):
                if json.loads(body)["status"] == "error":
                    r.fail("failed_job", f"{job_id}: {json.loads(body)['error']}")
                pending.remove(job_id)
        time.sleep(1)
    for job_id in pending:
        r.fail("stuck_job", job_id)
    status, _, body, _ = get(d.port, "/api/summaries?limit=500")
    listed = {j["id"] for j in json.loads(body)["data"]} if status == 200 else set()
    for job_id in deleted & listed:
        r.fail("deleted_job_listed", job_id)
    db = sqlite3.connect(d.state_dir / "summaries.sqlite3")
    twice = db.execute("SELECT COUNT(*) FROM chunks WHERE completions > 1").fetchone()[0]
    if twice:
        r.fail("chunk_not_once", f"{twice} chunks summarized more than once")
    db.close()
    r.notes.append(f"jobs: {len(jobs)} created, {len(deleted)} deleted, {1 if quick else 3} kill -9")


def phase_drain(d: Daemon, r: Report, quick: bool) -> None:
    """SIGTERM under load: every stream ends with its finish or an OpenAI-shaped error event,
    every plain request is answered, and the daemon exits 0 within drain_timeout_s (+1 s)."""
    outcomes = []

    def streaming():
        body = json.dumps(chat_body(max_tokens=2000, stream=True, logit_bias=NO_EOS))
        try:
            with socket.create_connection((HOST, d.port), timeout=30) as s:
                s.sendall(
                    f"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json"
                    f"\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
                )
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                    if b"data: [DONE]" in data:
                        break
        except OSError:
            pass
        ended = b"data: [DONE]" in data and (b'"finish_reason": "' in data or b'"error"' in data)
        outcomes.append(("stream", ended))

    def plain():
        status, _, body, _ = request(
            d.port, "POST", "/v1/chat/completions", chat_body(max_tokens=2000, logit_bias=NO_EOS), timeout=30
        )
        r.check_response("plain during drain", status, body)
        outcomes.append(("plain", status in (200, 503)))

    threads = [threading.Thread(target=f) for f in (streaming, plain) * (3 if quick else 6)]
    for t in threads:
        t.start()
    time.sleep(2)
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    try:
        rc = d.proc.wait(DRAIN_S + 15)
    except subprocess.TimeoutExpired:
        rc = None
        d.kill9()
    took = time.monotonic() - t0
    for t in threads:
        t.join(30)
    r.num_requests += len(outcomes)
    for kind, ok in outcomes:
        if not ok:
            r.fail("cut_off", f"a {kind} request ended without an answer at drain")
    if rc != 0 or took > DRAIN_S + 2:
        r.fail("drain", f"exit {rc} after {took:.1f} s (drain_timeout_s {DRAIN_S})")
    r.notes.append(f"drain: exit {rc} after {took:.1f} s, {len(outcomes)} requests answered")
    d.start()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer of each attack (about 1.5 minutes)")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--set", action="append", default=[], help="section.key=value for the daemon")
    args = ap.parse_args(argv)
    phases = [p for p in args.phases.split(",") if p]
    unknown = set(phases) - set(PHASES)
    if unknown:
        ap.error(f"unknown phases: {', '.join(sorted(unknown))}")
    r = Report()
    with tempfile.TemporaryDirectory(prefix="edge-llm-attack-") as tmp:
        d = Daemon(Path(tmp) / "state", *args.set)
        d.start()
        try:
            for name in phases:
                t0 = time.monotonic()
                globals()[f"phase_{name}"](d, r, args.quick)
                if not d.alive:
                    r.fail("crash", f"the daemon died during {name}: {''.join(d.log[-5:])}")
                    d.start()
                print(f"{name}: {time.monotonic() - t0:.0f} s, {dict(r.counts) or 'clean'}", file=sys.stderr)
        finally:
            if d.alive:
                d.stop()
        crashes = sum("Segmentation fault" in line or "Fatal Python error" in line for line in d.log)
        if crashes:
            r.fail("crash", f"{crashes} fatal errors in the log")
    summary = {
        "requests": r.num_requests,
        "counts": {
            k: r.counts.get(k, 0)
            for k in (
                "crash",
                "5xx",
                "not_openai_shaped",
                "unexpected_status",
                "cross_site_accepted",
                "lost_job",
                "stuck_job",
                "chunk_not_once",
                "leak",
                "slow",
                "cut_off",
                "drain",
            )
        }
        | dict(r.counts),
        "notes": r.notes,
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 1 if any(r.counts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
