"""The CLI as a user meets it (issue 23, item 8): no tracebacks, --version, help that says what
each command does, chat options, and `summarize` following its job through a daemon restart."""

import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import RunningDaemon, make_config

from edge_llm import cli
from edge_llm.client import Progress


def edge_llm(*args, stdin="", timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "edge_llm", *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_free(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return
            except OSError:
                assert time.monotonic() < deadline, f"port {port} still taken"
        time.sleep(0.2)


def test_version_and_help_describe_every_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.startswith("edge-llm ")
    for cmd, words in [
        ("serve", "503 while the model loads"),
        ("chat", "Ctrl-C stops an answer"),
        ("summarize", "time left"),
        ("plan", "which limit binds"),
        ("doctor", "command that fixes"),
    ]:
        with pytest.raises(SystemExit):
            cli.main([cmd, "--help"])
        out = capsys.readouterr().out
        assert words in " ".join(out.split()), cmd
    with pytest.raises(SystemExit):
        cli.main(["chat", "--help"])
    out = capsys.readouterr().out
    assert all(opt in out for opt in ("--temperature", "--top-p", "--max-tokens", "--seed", "--system"))


def test_no_daemon_is_a_message_not_a_traceback(tmp_path):
    port = free_port()
    doc = tmp_path / "note.txt"
    doc.write_text("A short note.")
    for args in (
        ["chat", "--url", f"http://127.0.0.1:{port}"],
        ["summarize", str(doc), "--url", f"http://127.0.0.1:{port}"],
    ):
        r = edge_llm(*args, stdin="hello\n")
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"no daemon answers at http://127.0.0.1:{port}" in r.stderr and "edge-llm serve" in r.stderr


def test_a_port_in_use_is_a_message_not_a_traceback(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = edge_llm(
            "serve",
            "--port",
            str(port),
            "--set",
            f"daemon.state_dir={tmp_path}",
            "--set",
            "planner.calibrate=false",
            timeout=180,
        )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in r.stderr and "--port" in r.stderr


def test_chat_with_options_against_the_daemon(server):
    r = edge_llm(
        "chat",
        "--url",
        server.url,
        "--temperature",
        "0",
        "--max-tokens",
        "8",
        "--system",
        "Be brief.",
        stdin="Name a fruit.\nAnd a colour?\n",
    )
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert len([line for line in r.stdout.splitlines() if line.strip()]) >= 2  # two answers


def test_progress_line_has_elapsed_time_and_time_left():
    bar = Progress()
    bar.started = 100.0
    assert "0:00 elapsed · estimating…" in bar.line(0.0, 8, 0, now=100.0)
    line = bar.line(2.0, 8, 0, now=110.0)  # 2 parts in 10 s: 6 more take 30 s
    assert line.startswith("[#######") and "2/8 parts" in line and "0:10 elapsed" in line and "~0:30 left" in line
    assert "2.3/8 parts" in bar.line(2.34, 8, 0, now=111.0)  # inside a part: tenths
    assert "estimating" in bar.line(0.0, 1, 1, now=111.0) and "combining, round 1" in bar.line(0.0, 1, 1, now=111.0)


def test_summarize_waits_for_a_restarting_daemon(tmp_path):
    """The daemon stops mid-job and comes back on the same port: the job resumes from its
    last finished part, and `edge-llm summarize` keeps waiting and prints the summary."""
    port, state = free_port(), tmp_path / "state"
    cfg = make_config(
        **{
            "server.port": port,
            "daemon.state_dir": str(state),
            "summarize.chunk_tokens": 96,
            "summarize.parallel": 2,
            "daemon.drain_timeout_s": 4,
        }
    )
    doc = tmp_path / "log.txt"
    doc.write_text(
        "\n\n".join(f"Entry {i}: the ferry carried {40 + i} cars and {200 + 3 * i} people across." for i in range(16))
    )
    first = RunningDaemon(cfg)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_llm", "summarize", str(doc), "--url", first.url, "--wait", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    err = []
    threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True).start()
    try:
        store = None
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:  # restart once a part is done, with more to come
            store = first.daemon.runtime.extensions.get("summaries")
            jobs = store.store.list(1, 0)[0] if store else []
            if jobs and jobs[0].chunks_done >= 1:
                break
            time.sleep(0.1)
        assert jobs and 1 <= jobs[0].chunks_done < jobs[0].chunks_total, jobs
        first.stop()
        wait_until_free(port)
        second = RunningDaemon(cfg)
        try:
            out, _ = proc.communicate(timeout=240)
        finally:
            second.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.2)
    stderr = "".join(err)
    assert proc.returncode == 0, stderr[-2000:]
    assert out.strip() and "Traceback" not in stderr
    assert "waiting for it" in stderr and "elapsed" in stderr


def test_a_loading_daemon_is_named_with_its_answer():
    """A stand-in answering 503 as the daemon does while it loads: the chat says so and exits 1."""
    import http.server
    import json

    class Loading(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps(
                {"error": {"message": "the model is loading", "type": "unavailable_error", "code": "loading"}}
            ).encode()
            self.send_response(503)
            for k, v in (("Content-Type", "application/json"), ("Retry-After", "0"), ("Content-Length", len(body))):
                self.send_header(k, str(v))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    stand_in = http.server.HTTPServer(("127.0.0.1", 0), Loading)
    threading.Thread(target=stand_in.serve_forever, daemon=True).start()
    try:
        r = edge_llm("chat", "--url", f"http://127.0.0.1:{stand_in.server_port}", stdin="hi\n")
    finally:
        stand_in.shutdown()
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "answered 503: the model is loading" in r.stderr


class _Summarizer:
    """What JobRunner needs of a Summarizer; run() is the test's."""

    def __init__(self, store, run):
        self.store, self.run = store, run
        self.stopping = threading.Event()

    def is_cancelled(self, job_id):
        return self.stopping.is_set()

    def stop(self):
        self.stopping.set()


@pytest.mark.parametrize("how", ["returns", "runner_dead", "done"])
def test_summarize_in_process_stops_when_the_job_thread_ends_without_a_status(tmp_path, monkeypatch, capsys, how):
    """`edge-llm summarize --in-process` waited only for the status done or error: a run()
    that returned without one (its is_cancelled branch), or a runner that never ran the job,
    left it waiting for ever. Now it says so and exits 1."""
    import types

    from edge_llm import appliance
    from edge_llm.summarize.jobs import JobStore
    from edge_llm.summarize.pipeline import JobRunner

    def run(job_id):
        if how == "done":
            summarizer.store.set_status(job_id, "done", result="the summary")
            return
        summarizer.stopping.set()  # stopped while running: run() returns, no status written

    store = JobStore(tmp_path / "jobs.sqlite3")
    summarizer = _Summarizer(store, run)
    runner = JobRunner(summarizer)
    if how != "runner_dead":
        runner.start()

    def create(name, data, kind):
        job = store.create(name, data, kind, len(data))
        runner.wake.set()
        return job

    service = types.SimpleNamespace(store=store, runner=runner, create=create, stop=lambda: runner.stop(1))
    engine = types.SimpleNamespace(stop=lambda: None)
    monkeypatch.setattr(appliance, "build_engine", lambda cfg, snap: (None, None, engine))
    monkeypatch.setattr(appliance, "open_summaries", lambda *a: service)
    doc = tmp_path / "doc.txt"
    doc.write_text("Some text to summarize.")
    result = []
    t = threading.Thread(target=lambda: result.append(cli.main(["summarize", str(doc), "--in-process"])), daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "still waiting for a job nobody runs"
    out, err = capsys.readouterr()
    if how == "done":
        assert result == [0] and out.strip() == "the summary"
    else:
        assert result == [1] and "the job failed" in err
        assert ("summary runner stopped" if how == "runner_dead" else "its thread ended") in err, err
