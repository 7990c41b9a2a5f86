"""Issue 22, the attack run: each defect it found, as a test against the real daemon (the real
model on a loopback port, real clients). Requests that crashed the process on the old code
run against a child process, so that a crash fails the test instead of the test run."""

import http.client as httplib
import json
import os
import signal
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest
from conftest import NO_EOS, Http, RunningDaemon, make_config, wait_until
from test_daemon import spawn

from edge_llm.server.openapi import document
from edge_llm.summarize.jobs import JobStore

HI = [{"role": "user", "content": "Hi"}]


def chat(http, **fields):
    return http.post("/v1/chat/completions", {"messages": HI, "max_tokens": 2, **fields})


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    """The daemon as a child process (debug hooks on: /debug/hang stalls its engine loop)."""
    tmp = tmp_path_factory.mktemp("child")
    proc, http, notify, log = spawn(tmp, "--set=daemon.drain_timeout_s=3")
    notify.wait_for("READY", "1")
    yield proc, http, log
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)
    notify.close()


# -- 1. what a schema may cost ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "maxLength": 30000},  # segfaulted llama.cpp's recursive parser
        {"enum": [f"v{i}" for i in range(50_000)]},  # 20+ s per token on the engine thread
        {"type": "array", "items": {"type": "string"}, "minItems": 1_000_000},
        {"type": "integer", "minimum": 1e308},
        {"type": "string", "pattern": "^a{0,30000}$"},
    ],
    ids=["maxLength", "enum", "minItems", "minimum", "pattern"],
)
def test_a_schema_over_the_bounds_is_a_quick_400_and_the_daemon_lives(child, schema):
    proc, http, _ = child
    t0 = time.monotonic()
    r = chat(http, response_format=schema_format(schema))
    assert r.status_code == 400 and time.monotonic() - t0 < 2, (r.status_code, r.text[:300])
    assert r.json()["error"]["param"] == "response_format.json_schema.schema"
    assert proc.poll() is None and http.get("/health").status_code == 200


def test_a_schema_at_the_bounds_still_constrains_the_output(http):
    schema = {
        "type": "object",
        "properties": {"tag": {"enum": [f"t{i}" for i in range(128)]}, "note": {"type": "string", "maxLength": 256}},
        "required": ["tag", "note"],
    }
    r = http.post(
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "Tag this: hello"}],
            "max_tokens": 60,
            "temperature": 0,
            "response_format": schema_format(schema),
        },
    )
    assert r.status_code == 200
    out = r.json()["choices"][0]
    if out["finish_reason"] == "stop":
        jsonschema.validate(json.loads(out["message"]["content"]), schema)


def test_the_grammar_is_parsed_off_the_engine_thread(child):
    """With the engine loop stalled, a request with a schema is still answered (here: its
    prompt is too long, which is checked after the grammar): the old code parsed the grammar
    through engine.call() and waited for the stalled loop."""
    _, http, _ = child
    assert http.post("/debug/hang?seconds=4").status_code == 200
    time.sleep(0.3)
    t0 = time.monotonic()
    r = http.post(
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "word " * 5000}],
            "response_format": schema_format({"type": "object"}),
        },
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert time.monotonic() - t0 < 2
    time.sleep(4)


# -- 4. 500s and NaN -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # RecursionError
        b'{"messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}',  # lone surrogate
        b'{"messages": [{"role": "user", "content": "Hi"}], "logit_bias": {"\xc2\xb2": 1}}',  # "2" superscript
        b'{"messages": [{"role": "user", "content": "Hi"}], "logit_bias": {"' + b"9" * 5000 + b'": 1}}',
    ],
    ids=["deep", "surrogate", "superscript-key", "5000-digit-key"],
)
def test_hostile_bodies_are_400_not_500(http, raw):
    r = http.post("/v1/chat/completions", raw, {"Content-Type": "application/json"})
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("field", ["temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty"])
@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_non_finite_sampling_numbers_are_refused(http, field, value):
    raw = f'{{"messages": [{{"role": "user", "content": "Hi"}}], "max_tokens": 2, "{field}": {value}}}'
    r = http.post("/v1/chat/completions", raw.encode(), {"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text[:300]


def test_a_non_ascii_digit_in_a_query_is_400(http):
    r = http.get("/api/summaries?limit=%C2%B2")
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"


def raw_exchange(port: int, data: bytes) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        resp = httplib.HTTPResponse(s)
        resp.begin()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


@pytest.mark.parametrize(
    "data,status",
    [
        (b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n", 431),
        (b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 999999999\r\n\r\n", 413),
        (b"GET /health HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: nope\r\n\r\n", 400),
    ],
    ids=["431", "413", "501", "400"],
)
def test_waitress_own_errors_are_openai_shaped(server, data, status):
    code, headers, body = raw_exchange(server.daemon.port, data)
    assert code == status and headers["content-type"].startswith("application/json")
    err = json.loads(body)["error"]
    assert err["message"] and err["type"] == "invalid_request_error"


def test_405_names_the_allowed_methods(http):
    r = http.request("PUT", "/v1/chat/completions")
    assert r.status_code == 405 and "POST" in r.headers["allow"]


# -- 2. summary jobs: delete mid-job -------------------------------------------------------------


def test_a_failed_transaction_is_rolled_back_and_the_store_goes_on(tmp_path):
    store = JobStore(tmp_path / "s.sqlite3")
    job = store.create("a.txt", b"x", "text/plain", 1)
    store.delete(job.id)
    with pytest.raises(sqlite3.IntegrityError):  # the job's row is gone: the foreign key fails
        store.add_level(job.id, 1, ["combined"])
    later = store.create("b.txt", b"y", "text/plain", 1)
    store.set_chunks(later.id, 1, ["one", "two"])  # the old store: "cannot start a transaction within a transaction"
    assert store.get(later.id).chunks_total == 2


def test_a_job_deleted_before_its_run_begins_is_not_run_and_leaves_no_mark(tmp_path):
    """The runner may pick a job just before its DELETE: the row goes first, so the run finds no
    job; a job that is not running gets no cancel mark to forget (they piled up, one per delete)."""
    from edge_llm.summarize.pipeline import Summarizer

    store = JobStore(tmp_path / "s.sqlite3")
    job = store.create("a.txt", b"The ferry leaves at 9.", "text/plain", 22)
    summarizer = Summarizer(None, None, store, chunk_tokens=160, summary_tokens=32, parallel=1)  # no engine: unused
    store.delete(job.id)
    summarizer.cancel_job(job.id)  # SummaryService.delete's order
    assert not summarizer._cancelled
    summarizer.run(job.id)  # picked before the delete
    assert store.get(job.id) is None and not summarizer._cancelled and not summarizer._running


@pytest.fixture(scope="module")
def jobs_daemon(tmp_path_factory):
    """Summaries with long chunk summaries, so a job's requests are in the engine for a while."""
    d = RunningDaemon(
        make_config(
            **{
                "daemon.state_dir": str(tmp_path_factory.mktemp("jobs")),
                "summarize.summary_tokens": 200,
                "summarize.chunk_tokens": 420,
                "summarize.parallel": 4,
            }
        )
    )
    yield d
    d.stop()


def report(n: int) -> bytes:
    return " ".join(
        f"Section {i}: the pump at station {i % 7} ran at {i % 90} percent for {i} hours." for i in range(n)
    ).encode()


def wait_job(http: Http, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/api/summaries/{job_id}").json()
        if job["status"] in ("done", "error"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end: {job}")


def test_delete_mid_job_cancels_its_requests_and_later_jobs_run(jobs_daemon):
    http, engine = Http(jobs_daemon.daemon.port), jobs_daemon.engine
    job = http.post("/api/summaries?filename=a.txt", report(120), {"Content-Type": "text/plain"}).json()
    deadline = time.monotonic() + 60
    while engine.num_running == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.5)  # chunks decoding
    assert http.request("DELETE", f"/api/summaries/{job['id']}").status_code == 204
    t0 = time.monotonic()
    while engine.num_running or engine.num_waiting:
        assert time.monotonic() - t0 < 1.5, f"the deleted job's chunks still run: {engine.stats()}"
        time.sleep(0.02)
    later = http.post(
        "/api/summaries?filename=b.txt", b"The ferry leaves at 9. It returns at 5.", {"Content-Type": "text/plain"}
    ).json()
    assert wait_job(http, later["id"])["status"] == "done"
    # the deleted job's mark is dropped once its run ends (it was kept for the daemon's life)
    summarizer = jobs_daemon.daemon.runtime.extensions["summaries"].summarizer
    wait_until(lambda: job["id"] not in summarizer._running, 10, "the deleted job's run to end")
    assert job["id"] not in summarizer._cancelled


def test_jobs_interleave_so_a_long_document_does_not_hold_a_short_one(jobs_daemon):
    http = Http(jobs_daemon.daemon.port)
    long = http.post("/api/summaries?filename=long.txt", report(200), {"Content-Type": "text/plain"}).json()
    time.sleep(0.5)
    short = http.post(
        "/api/summaries?filename=short.txt", b"The ferry leaves at 9. It returns at 5.", {"Content-Type": "text/plain"}
    ).json()
    assert wait_job(http, short["id"], timeout=60)["status"] == "done"
    assert http.get(f"/api/summaries/{long['id']}").json()["status"] == "running"
    assert http.request("DELETE", f"/api/summaries/{long['id']}").status_code == 204


def test_a_document_of_more_parts_than_max_chunks_ends_with_an_error(tmp_path):
    d = RunningDaemon(make_config(**{"daemon.state_dir": str(tmp_path), "summarize.max_chunks": 2}))
    try:
        http = Http(d.daemon.port)
        job = http.post("/api/summaries?filename=a.txt", report(60), {"Content-Type": "text/plain"}).json()
        done = wait_job(http, job["id"])
        assert done["status"] == "error" and "summarize.max_chunks" in done["error"]
    finally:
        d.stop()


def test_a_second_daemon_on_the_same_state_dir_refuses_to_start(server):
    from edge_llm.daemon import Daemon

    second = Daemon(make_config(**{"daemon.state_dir": server.daemon.cfg.daemon.state_dir}))
    rc = []
    t = threading.Thread(target=lambda: rc.append(second.run()), daemon=True)
    t.start()
    t.join(10)
    second.stop_requested.set()  # the old code started serving the same store
    assert rc == [1] and "in use" in second.runtime.status


# -- 3. a flood and slow clients ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def flood_daemon(tmp_path_factory):
    """The default queue (64) and batch (8): more than waitress's old 32 threads."""
    d = RunningDaemon(
        make_config(
            **{
                "daemon.state_dir": str(tmp_path_factory.mktemp("flood")),
                "limits.max_queue": 64,
                "limits.max_batch_size": 8,
            }
        )
    )
    yield d
    d.stop()


def timed_get(port: int, path: str) -> tuple[int, float]:
    t0 = time.monotonic()
    try:
        r = Http(port).get(path)
        return r.status_code, time.monotonic() - t0
    except OSError:
        return 0, time.monotonic() - t0


def test_slow_connections_do_not_take_health_and_the_page_offline(flood_daemon):
    port, slow = flood_daemon.daemon.port, []
    try:
        for _ in range(200):  # slowloris: a request line and never the end of the headers
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            slow.append(s)
        time.sleep(0.5)
        for path in ("/health", "/", "/metrics"):
            status, took = timed_get(port, path)
            assert status == 200 and took < 1.0, (path, status, took)
    finally:
        for s in slow:
            s.close()


def test_a_flood_gets_429_quickly_while_health_and_the_page_answer(flood_daemon):
    port = flood_daemon.daemon.port
    body = json.dumps(
        {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 300, "logit_bias": NO_EOS}
    )
    results, conns = [], []
    lock = threading.Lock()

    def one(_):
        conn = httplib.HTTPConnection("127.0.0.1", port, timeout=60)
        with lock:
            conns.append(conn)
        t0 = time.monotonic()
        try:
            conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status == 429:
                resp.read()
            results.append((resp.status, time.monotonic() - t0, resp.getheader("Retry-After")))
        except OSError:
            results.append((0, time.monotonic() - t0, None))

    pool = ThreadPoolExecutor(200)
    try:
        futures = [pool.submit(one, i) for i in range(200)]
        time.sleep(1.5)
        for path in ("/health", "/"):
            status, took = timed_get(port, path)
            assert status == 200 and took < 1.0, (path, status, took)
        refused = [r for r in results if r[0] == 429]
        assert len(refused) >= 200 - (64 + 8 + 8), f"{len(refused)} x 429 after 1.5 s: {results[:5]}"
        assert all(took < 1.0 and retry for _, took, retry in refused)
    finally:
        for conn in list(conns):  # the clients go away: their requests are cancelled
            try:
                conn.sock and conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for f in futures:
            f.result(60)
        pool.shutdown()
    flood_daemon.wait_idle(30)


# -- 5. drain ---------------------------------------------------------------------------------------


def test_drain_ends_streams_with_an_error_event_and_waiting_requests_with_503(tmp_path):
    proc, http, notify, _ = spawn(tmp_path, "--set=daemon.drain_timeout_s=3")
    try:
        notify.wait_for("READY", "1")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{http.port}/v1", api_key="x", max_retries=0, timeout=30)
        model = client.models.list().data[0].id
        outcome = {}

        def streaming():
            try:
                for _ in client.chat.completions.create(
                    model=model, messages=HI, max_tokens=500, stream=True, logit_bias=NO_EOS
                ):
                    pass
                outcome["stream"] = "finished"
            except openai.APIError as e:
                outcome["stream"] = str(e)

        def plain():
            try:
                client.chat.completions.create(model=model, messages=HI, max_tokens=500, logit_bias=NO_EOS)
                outcome["plain"] = "finished"
            except openai.APIStatusError as e:
                outcome["plain"] = e.status_code

        threads = [threading.Thread(target=streaming), threading.Thread(target=plain)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        assert http.post("/debug/hang?seconds=20").status_code == 200  # nothing finishes in time
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(10)
        assert proc.wait(15) == 0
        took = time.monotonic() - t0
        assert "shutting down" in outcome["stream"] and outcome["plain"] == 503, outcome
        assert took < 3 + 2.5, took
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        notify.close()


# -- 6. memory pressure ----------------------------------------------------------------------------


def test_requests_while_admission_is_paused_are_answered_not_held(server, http):
    server.engine.set_admission_paused(True)
    try:
        while not server.engine.scheduler.admission_paused:  # set by the engine loop
            time.sleep(0.01)
        t0 = time.monotonic()
        r = chat(http)
        assert r.status_code == 503 and r.headers.get("retry-after") and time.monotonic() - t0 < 2
    finally:
        server.engine.set_admission_paused(False)


def test_a_request_not_admitted_in_time_gets_503(tmp_path):
    d = RunningDaemon(
        make_config(**{"daemon.state_dir": str(tmp_path), "limits.max_batch_size": 1, "server.queue_timeout_s": 1.0})
    )
    try:
        http = Http(d.daemon.port)
        first = threading.Thread(target=chat, args=(http,), kwargs={"max_tokens": 400, "logit_bias": NO_EOS})
        first.start()
        while d.engine.num_running == 0:  # the batch of one is taken
            time.sleep(0.01)
        t0 = time.monotonic()
        r = Http(d.daemon.port).post("/v1/chat/completions", {"messages": HI, "max_tokens": 2})
        assert r.status_code == 503 and time.monotonic() - t0 < 3
    finally:
        first.join(60)
        d.stop()


def test_default_thresholds_scale_to_a_small_memory(tmp_path):
    from edge_llm import config as config_mod
    from edge_llm import pressure

    p = config_mod.load(env={}).planner
    total = 600 << 20  # the attack run's cgroup
    reserve = pressure.reserve_bytes(p, total)
    low, critical = pressure.watermarks(p, total, reserve)
    assert reserve <= total // 4 and critical < low <= reserve // 2
    big = pressure.reserve_bytes(p, 64 << 30)
    assert big == 1024 << 20  # a 64 GB Orin keeps the old absolute reserve


def test_default_thresholds_start_and_serve_in_a_600_mib_cgroup(tmp_path):
    """The attack run's cgroup: the old 1 GiB reserve stopped start-up there."""
    import test_pressure

    with test_pressure.daemon_in_cgroup(
        f"edge-llm-600-{os.getpid()}", 600 << 20, f"daemon.state_dir={tmp_path}", "planner.calibrate=false"
    ) as (proc, http, cg, log):
        assert chat(http, max_tokens=8).status_code == 200
        h = http.get("/health").json()
        assert h["status"] == "ready" and not h["admission_paused"]
        assert test_pressure.oom_kills(cg) == 0


# -- 7. health, OpenAPI, disconnects -------------------------------------------------------------------


def test_health_is_503_while_the_engine_loop_makes_no_progress(child):
    _, http, _ = child
    assert http.get("/health").status_code == 200
    assert http.post("/debug/hang?seconds=9").status_code == 200
    deadline, status = time.monotonic() + 8.5, 200
    while time.monotonic() < deadline and status == 200:
        time.sleep(0.25)
        r = http.get("/health")
        status = r.status_code
    assert status == 503 and r.json()["status"] == "stalled"
    time.sleep(max(0.0, deadline + 1 - time.monotonic()))
    assert http.get("/health").status_code == 200


def request_schema(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}", "components": document()["components"]}


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user"}]},  # no content
        {"messages": [{"role": "user", "content": None}]},
    ],
)
def test_the_document_refuses_what_the_server_refuses(http, body):
    assert http.post("/v1/chat/completions", body).status_code == 400
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(request_schema("ChatCompletionRequest")).validate(body)


def test_the_document_bounds_offset_and_document_size_like_the_server(http):
    paths = document()["paths"]["/api/summaries"]
    offset = next(p for p in paths["get"]["parameters"] if p["name"] == "offset")["schema"]
    assert offset["maximum"] == 10**9 and http.get(f"/api/summaries?offset={10**9 + 1}").status_code == 400
    text = paths["post"]["requestBody"]["content"]["text/plain"]["schema"]
    assert text.get("minLength") == 1
    assert http.post("/api/summaries?filename=a.txt", b"", {"Content-Type": "text/plain"}).status_code == 400


def test_a_non_streaming_request_whose_client_leaves_is_cancelled(server, client):
    server.wait_idle()
    slow = client.with_options(timeout=0.7)
    with pytest.raises(openai.APITimeoutError):
        slow.chat.completions.create(
            model=server.model_id,
            messages=[{"role": "user", "content": "Tell a story."}],
            max_tokens=500,
            logit_bias=NO_EOS,
        )
    t0 = time.monotonic()
    while server.engine.num_running:
        assert time.monotonic() - t0 < 1.5, "the abandoned request still runs"
        time.sleep(0.02)


def test_the_attack_script_reports_clean_on_its_quick_request_phases(tmp_path):
    """tools/attack.py itself (the full run is by hand): its cheap phases, against its own daemon."""
    from tools import attack

    out = tmp_path / "attack.json"
    assert (
        attack.main(
            [
                "--quick",
                "--phases",
                "schemas,bad_requests,cross_site",
                "--json",
                str(out),
                "--set",
                "planner.calibrate=false",
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["requests"] > 50 and not any(report["counts"].values()), report
