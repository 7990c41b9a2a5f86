"""The CLI as a user meets it (issue 23, item 8): no tracebacks, --version, help that says what
each command does, chat options, and `summarize` following its job through a daemon restart."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import RunningDaemon, make_config, wait_until

from edge_llm import appliance, cli
from edge_llm.client import Progress
from edge_llm.daemon import Daemon


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
        ("bench", "sets the mode in effect before back"),
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
        ["summarize", str(doc), "--url", f"http://127.0.0.1:{port}", "--wait", "1"],  # 1 s for one starting
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


# -- a daemon still loading, a document over the limit, options refused, input that is not text ----------
class Stderr:
    """A child's stderr as it comes (its waiting lines end in a carriage return, not a newline)."""

    def __init__(self, proc: subprocess.Popen):
        self.chunks: list[bytes] = []
        threading.Thread(target=self._read, args=(proc.stderr.fileno(),), daemon=True).start()

    def _read(self, fd: int) -> None:
        while chunk := os.read(fd, 4096):
            self.chunks.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")


class HeldDaemon:
    """The real daemon on a given port with its model load held until release(): its loading
    phase (/api/status says "loading", work gets 503) lasts as long as a test needs."""

    def __init__(self, port: int, state, monkeypatch):
        self.loaded = threading.Event()
        build = appliance.build_engine

        def held_build(*args, **kwargs):
            self.loaded.wait(120)
            return build(*args, **kwargs)

        monkeypatch.setattr(appliance, "build_engine", held_build)
        cfg = make_config(**{"server.port": port, "daemon.state_dir": str(state), "planner.calibrate": False})
        self.daemon = Daemon(cfg)
        self.thread = threading.Thread(target=self.daemon.run, name="held-daemon", daemon=True)

    def stop(self) -> None:
        self.loaded.set()
        self.daemon.stop_requested.set()
        if self.thread.is_alive():
            self.thread.join(60)


@pytest.mark.parametrize("command", ["summarize", "chat"])
def test_a_daemon_started_after_the_client_is_waited_for_while_it_loads(tmp_path, monkeypatch, command):
    """`edge-llm serve & edge-llm summarize doc.txt`: the client comes first (no daemon yet),
    then the daemon listens and loads its model (503 "loading"): the client waits, saying so,
    and gets its answer once the model is ready; nothing tells it to start a daemon."""
    port, doc = free_port(), tmp_path / "doc.txt"
    doc.write_text("The ferry carried forty cars across the bay on Monday. On Tuesday the sea was rough.")
    held = HeldDaemon(port, tmp_path / "state", monkeypatch)
    args = [str(doc)] if command == "summarize" else ["--max-tokens", "8", "--temperature", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_llm", command, *args, "--url", f"http://127.0.0.1:{port}", "--wait", "60"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    err = Stderr(proc)
    try:
        proc.stdin.write(b"Name a fruit.\n")
        proc.stdin.close()
        wait_until(lambda: "no daemon answers yet" in err.text or proc.poll() is not None, 60, "a client waiting")
        assert proc.poll() is None, err.text  # it did not give up on a daemon that is starting
        held.thread.start()
        wait_until(lambda: "the daemon is loading" in err.text or proc.poll() is not None, 60, "the loading line")
        assert proc.poll() is None, err.text
        held.loaded.set()
        out = proc.stdout.read()
        assert proc.wait(120) == 0, err.text
    finally:
        if proc.poll() is None:
            proc.kill()
        held.stop()
    assert out.strip() and "Traceback" not in err.text and "start one" not in err.text, err.text


@pytest.mark.parametrize("num_bytes", [(20 << 20) + (1 << 10), 21 << 20])
def test_a_document_over_the_limit_names_both_sizes(server, tmp_path, num_bytes):
    """Over the limit (20 MiB) the daemon answers 413; over the HTTP server's own cap (64 KiB
    more) it does so from the headers and closes, and the client, sending on, was reset and
    said "no daemon answers". Now it stops sending, and says both sizes."""
    doc, line = tmp_path / "big.txt", b"The ferry crossed the bay.\n"
    doc.write_bytes((line * (num_bytes // len(line) + 1))[:num_bytes])
    r = edge_llm("summarize", str(doc), "--url", server.url)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    size = "20.1" if num_bytes < 21 << 20 else "21.0"
    assert f"the document is {size} MiB, the daemon at {server.url} accepts at most 20.0 MiB" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "option",
    [["--temperature", "5"], ["--max-tokens", "-3"], ["--top-p", "0"], ["--seed", str(2**64)], ["--url", "nope"]],
)
def test_chat_options_out_of_range_are_refused_before_asking(capsys, option):
    with pytest.raises(SystemExit) as e:
        cli.main(["chat", *option])
    assert e.value.code == 2 and f"argument {option[0]}:" in capsys.readouterr().err


def test_chat_exits_1_at_a_model_the_daemon_refuses(server):
    r = edge_llm("chat", "--url", server.url, "--model-id", "nope", stdin="Name a fruit.\nAnd a colour?\n")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("404: model 'nope' does not exist") == 1  # stopped: every question would be refused


def test_startup_errors_are_one_line_not_a_traceback(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    notes = tmp_path / "notes.txt"
    notes.write_text("just notes")
    serve = ["serve", "--port", "0", "--set", "planner.calibrate=false"]
    for args, says in (
        (["serve", "--set", "daemon.state_dir=/proc/nope"], "cannot use the state directory /proc/nope"),
        (["serve", "--set", f"daemon.state_dir={tmp_path / 'a-file'}"], "a-file (daemon.state_dir): it is not a"),
        ([*serve, "--set", f"daemon.state_dir={tmp_path}", "--model", str(notes)], "not a GGUF model?"),
        (["plan", "--model", str(notes)], f"edge-llm plan: llama.cpp could not load {notes}"),
    ):
        r = edge_llm(*args)
        assert r.returncode == 1 and "Traceback" not in r.stderr and says in r.stderr, (args, r.stderr[-2000:])


def test_input_that_is_not_utf8_is_replaced_not_a_traceback(server, tmp_path):
    """Python holds bytes that are no UTF-8 (stdin, a file name) as lone surrogates, which no
    JSON body or URL can carry: they go out replaced."""
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    run = [sys.executable, "-m", "edge_llm"]
    r = subprocess.run(
        [*run, "chat", "--url", server.url, "--max-tokens", "4"], input=b"caf\xe9?\n", capture_output=True, env=env
    )
    assert r.returncode == 0 and b"Traceback" not in r.stderr and r.stdout.strip(), r.stderr
    doc = os.fsencode(tmp_path) + b"/caf\xe9.txt"
    with open(doc, "w") as f:
        f.write("The cat sat on the mat. It was a sunny day.")
    r = subprocess.run([*run, "summarize", doc, "--url", server.url], capture_output=True, env=env, timeout=120)
    assert r.returncode == 0 and b"Traceback" not in r.stderr and r.stdout.strip(), r.stderr


def test_bench_refuses_bad_options_before_loading_the_model(tmp_path, monkeypatch, capsys):
    def no_model(*args):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(appliance, "build_engine", no_model)
    for option in (["--batch", "0"], ["--prompt-tokens", "0"], ["--decode-tokens", "-1"], ["--settle-s", "-1"]):
        with pytest.raises(SystemExit) as e:
            cli.main(["bench", *option])
        assert e.value.code == 2 and f"argument {option[0]}:" in capsys.readouterr().err
    for option, says in (
        (["--power-modes", "all", "--nvpmodel-conf", str(tmp_path / "none")], "power modes need a Jetson's nvpmodel"),
        (["--json", str(tmp_path / "no-dir" / "x.json")], f"no directory {tmp_path / 'no-dir'}"),
        (["--json", str(tmp_path)], "is a directory"),
    ):
        assert cli.main(["bench", *option]) == 2
        assert says in capsys.readouterr().err


def test_plan_for_a_model_profile_alone_is_for_this_machine(capsys):
    assert cli.main(["plan", "--model-profile", "llama-3-8b-int4"]) == 0
    assert "== Llama-3-8B INT4 on this machine" in capsys.readouterr().out
    assert cli.main(["plan", "--model-profile", "llama-3-8b-int4", "--json"]) == 0
    assert [row["device"] for row in json.loads(capsys.readouterr().out)] == ["this machine"]


def test_an_unknown_option_shows_the_command_usage(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["doctor", "--bogus"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("usage: edge-llm doctor") and "--bogus" in err


def test_doctor_says_nvml_is_present_only_where_it_starts():
    """pynvml is a wrapper: importable without the driver's libnvidia-ml, where every reading fails."""
    from edge_llm import doctor

    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        starts = True
    except pynvml.NVMLError:
        starts = False
    assert (doctor.checks()["nvml"] == "present") == starts


def test_a_large_upload_over_https_is_sent_whole(tmp_path, monkeypatch):
    """A daemon behind a TLS proxy (`--url https://...`). The client watches for an early answer
    (a 413) between the parts of a body, but over TLS 1.3 the session tickets make the socket
    readable too: it stopped after 64 KiB and the upload timed out (a review's finding). The
    proxy here is a stand-in (the daemon serves plain HTTP): a TLS server that reads the whole
    body, then answers 202."""
    import socket
    import ssl
    import subprocess
    import threading

    from edge_llm import client

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    got = {}

    def serve():
        conn, _ = listener.accept()
        with ctx.wrap_socket(conn, server_side=True) as s:
            s.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, body = data.split(b"\r\n\r\n", 1)
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            )
            while len(body) < length:
                body += s.recv(65536)
            got["body"] = len(body)
            s.sendall(b'HTTP/1.1 202 Accepted\r\nContent-Length: 10\r\nConnection: close\r\n\r\n{"id":"x"}')

    threading.Thread(target=serve, daemon=True).start()
    trusting = ssl.create_default_context(cafile=str(cert))
    trusting.check_hostname, trusting.verify_mode = False, ssl.CERT_NONE  # as the review's repro ran
    monkeypatch.setattr(ssl, "_create_default_https_context", lambda: trusting)
    daemon = client.Daemon(f"https://127.0.0.1:{listener.getsockname()[1]}")
    assert daemon.request("POST", "/api/summaries", b"x" * 1_000_000, {"Content-Type": "text/plain"}) == (
        202,
        {"id": "x"},
    )
    assert got == {"body": 1_000_000}
    listener.close()


def test_a_reader_that_stops_early_gets_no_traceback():
    """`edge-llm plan --device ... --json | head -c 100`: the pipe closes under a long output, and the
    BrokenPipeError came out as a traceback (a review's finding)."""
    import subprocess
    import sys

    from edge_llm.profiles import DEVICES, MODELS

    named = [a for d in sorted(DEVICES) for a in ("--device", d)] + [
        a for m in sorted(MODELS) for a in ("--model-profile", m)
    ]
    proc = subprocess.Popen(  # named devices only: this machine's plan would calibrate (seconds, and its cache)
        [sys.executable, "-m", "edge_llm", "plan", *named, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    proc.stdout.read(100)
    proc.stdout.close()  # as head does once it has its bytes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err, err
