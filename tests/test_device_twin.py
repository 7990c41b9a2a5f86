"""The device twin (tools/device_twin.py): jetpack/install.sh run for real by the flash
overlay's first-boot unit, and edge-llm.service under a real systemd 252 as PID 1 of its own
Debian root filesystem, with every hardening option of systemd/edge-llm.service on.

What the twin cannot show (aarch64, systemd 249, the GPU device nodes and cgroup, real jtop,
swap) is listed in the README; passing here proves none of it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from tools import device_twin

pytestmark = pytest.mark.twin
API = "http://127.0.0.1:8000"
INSTALL = "/opt/edge-llm/src/jetpack/install.sh --headless --wheelhouse /opt/edge-llm/wheelhouse " + " ".join(
    device_twin.INSTALL_ARGS)


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    missing = device_twin.missing_tools()
    if missing:
        pytest.skip(f"the device twin needs {', '.join(missing)} (tools/setup.sh test installs them as root)")
    t = device_twin.prepare(tmp_path_factory.mktemp("twin"))
    try:
        t.boot()
        yield t
    finally:
        t.stop()
        assert not t.is_mounted()
        assert t.nspawn is None


def show(twin, unit: str, *props: str) -> dict[str, str]:
    out = twin.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def curl(twin, path: str, *args: str, check: bool = True) -> str:
    return twin.sh(f"curl -sS --max-time 120 {' '.join(args)} {API}{path}", check=check).stdout


def client(twin, code: str, timeout: float = 180, popen: bool = False):
    """The official openai client of this machine, run in the twin's network namespace; the
    code sees `c` (the client) and `MODEL` (the daemon's model id)."""
    prog = (f"from openai import OpenAI\nc = OpenAI(base_url='{API}/v1', api_key='none')\n"
            "MODEL = c.models.list().data[0].id\n") + textwrap.dedent(code)
    if popen:
        return subprocess.Popen(twin.netns_argv([sys.executable, "-c", prog]), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(twin.netns_argv([sys.executable, "-c", prog]), capture_output=True, text=True,
                          timeout=timeout)


def standin_calls(twin) -> list[str]:
    text = twin.sh("cat /var/log/edge-llm-twin/standins.log", check=False).stdout
    return [line.split(" ", 1)[1] for line in text.splitlines()]


def journal(twin, unit: str, since: str = "") -> list[dict]:
    out = twin.sh(f"journalctl -u {unit} -o json --no-pager {since}").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_for(predicate, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_first_boot_provisioned_the_twin_with_install_sh(twin):
    # the flash overlay's first-boot unit ran install.sh, marked the device and disabled itself
    fb = show(twin, "edge-llm-firstboot", "Result", "ExecMainStatus", "UnitFileState")
    log = "".join(e["MESSAGE"] + "\n" for e in journal(twin, "edge-llm-firstboot") if isinstance(e.get("MESSAGE"), str))
    assert fb == {"Result": "success", "ExecMainStatus": "0", "UnitFileState": "disabled"}, (fb, log[-3000:])
    twin.sh("test -f /var/lib/edge-llm/.provisioned")
    assert "found: # R36 (release), REVISION: 4.0" in log
    # users and groups, the venv with edge-llm from the wheelhouse, config, units
    groups = twin.sh("id -nG edge-llm").stdout.split()
    assert {"edge-llm", "video", "render", "jtop"} <= set(groups), groups
    assert "edge-llm" in twin.sh("/opt/edge-llm/venv/bin/pip list --format=freeze").stdout
    assert "install ok installed" in twin.sh("dpkg -s python3-systemd").stdout  # the journal binding, from apt
    assert "install ok installed" in twin.sh("dpkg -s nvidia-jetpack").stdout
    twin.sh("test -f /etc/edge-llm/edge-llm.toml")
    for unit in ("edge-llm.service", "edge-llm-clocks.service", "jtop.service"):
        assert twin.sh(f"systemctl is-enabled {unit}").stdout.strip() == "enabled", unit
    # the unit is the repository's, byte for byte: every hardening option on
    twin.sh("cmp /etc/systemd/system/edge-llm.service /opt/edge-llm/src/systemd/edge-llm.service")
    # the JetPack stand-ins were called the way install.sh and the clocks unit call them
    calls = standin_calls(twin)
    assert "nvpmodel -m 0" in calls and "jetson_clocks " in calls and "nm-online -s -q --timeout=600" in calls
    assert any(c.startswith("jtop.service") for c in calls)
    # swap: the file and its fstab line; a container may not turn it on, which install.sh says
    assert twin.sh("stat -c %s /var/swap-edge-llm").stdout.strip() == str(1 << 30)
    assert "/var/swap-edge-llm none swap sw 0 0" in twin.sh("cat /etc/fstab").stdout
    swapped_on = "/var/swap-edge-llm" in twin.sh("swapon --show=NAME --noheadings").stdout
    assert swapped_on or "swapon /var/swap-edge-llm failed (systemd-nspawn)" in log


def test_install_sh_is_idempotent(twin):
    before = twin.sh("md5sum /etc/edge-llm/edge-llm.toml /etc/systemd/system/*.service /etc/fstab").stdout
    out = twin.sh(INSTALL + " 2>&1", timeout=600).stdout
    for acted in ("creating the system user", "installing apt packages", "creating /opt/edge-llm/venv",
                  "writing /etc/edge-llm", "swap file /var/swap-edge-llm of", "adding edge-llm to group jtop"):
        assert acted not in out, (acted, out)
    assert twin.sh("md5sum /etc/edge-llm/edge-llm.toml /etc/systemd/system/*.service /etc/fstab").stdout == before
    assert twin.sh("systemctl is-active edge-llm").stdout.strip() == "active"


def test_start_returns_only_when_ready_and_the_sandbox_holds(twin):
    # Type=notify: `systemctl restart` returns after READY=1, which comes after the warm-up
    twin.sh("systemctl restart edge-llm", timeout=300)
    health = json.loads(curl(twin, "/health"))
    assert health["status"] == "ready", health
    msgs = [e["MESSAGE"] for e in journal(twin, "edge-llm", "-n 200") if isinstance(e.get("MESSAGE"), str)]
    warmed = max(i for i, m in enumerate(msgs) if m == "warming up")
    ready = max(i for i, m in enumerate(msgs) if m.startswith("ready: ") and "; batch " in m)
    started = max(i for i, m in enumerate(msgs) if m.startswith("Started edge-llm"))
    assert warmed < ready < started, msgs[-20:]
    pid = show(twin, "edge-llm", "MainPID")["MainPID"]
    status = twin.sh(f"cat /proc/{pid}/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2"
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
    assert twin.sh(f"stat -c %U /proc/{pid}").stdout.strip() == "edge-llm"


def test_chat_completion_and_structured_journal_fields(twin):
    r = client(twin, """
        r = c.chat.completions.create(model=MODEL, temperature=0, max_tokens=12,
                                      messages=[{"role": "user", "content": "Say hello."}])
        print(r.model_dump_json())
    """)
    assert r.returncode == 0, r.stderr
    resp = json.loads(r.stdout)
    assert resp["choices"][0]["message"]["content"].strip() and resp["usage"]["completion_tokens"] > 0
    entries = journal(twin, "edge-llm", "-n 300")
    mine = [e for e in entries if e.get("REQUEST_ID") and e.get("MODEL") == resp["model"]]
    assert mine, [e.get("MESSAGE") for e in entries[-10:]]
    assert mine[-1]["FINISH_REASON"] == resp["choices"][0]["finish_reason"]
    assert mine[-1]["SYSLOG_IDENTIFIER"] == "edge-llm" and mine[-1]["_SYSTEMD_UNIT"] == "edge-llm.service"


def test_reload_applies_safe_keys_and_names_the_rest(twin):
    twin.sh("cp /etc/edge-llm/edge-llm.toml /root/edge-llm.toml.orig")
    pid = show(twin, "edge-llm", "MainPID")["MainPID"]
    try:
        twin.sh("printf '\\n[limits]\\nmax_queue = 77\\n' >> /etc/edge-llm/edge-llm.toml && "
                "sed -i 's/^host = \"127.0.0.1\"/host = \"127.0.0.1\"\\nport = 8001/' /etc/edge-llm/edge-llm.toml")
        twin.sh("systemctl reload edge-llm")
        line = wait_for(lambda: [e["MESSAGE"] for e in journal(twin, "edge-llm", "-n 50")
                                 if str(e.get("MESSAGE", "")).startswith("SIGHUP:")], 20, "the reload's log line")
        assert line[-1] == "SIGHUP: applied limits.max_queue; needs a restart: server.port", line
        assert show(twin, "edge-llm", "MainPID")["MainPID"] == pid  # reloaded in place
        assert json.loads(curl(twin, "/health"))["status"] == "ready"  # still on the old port
    finally:
        twin.sh("cp /root/edge-llm.toml.orig /etc/edge-llm/edge-llm.toml && systemctl reload edge-llm")


def test_stop_drains_an_in_flight_stream_and_exits_0(twin):
    proc = client(twin, """
        import sys
        s = c.chat.completions.create(model=MODEL, temperature=0, max_tokens=150, stream=True,
                                      messages=[{"role": "user", "content": "Write a long story about a lighthouse."}])
        n, finish = 0, None
        for ch in s:
            if ch.choices and ch.choices[0].delta.content:
                n += 1
                if n == 1:
                    print("FIRST", flush=True)
            if ch.choices and ch.choices[0].finish_reason:
                finish = ch.choices[0].finish_reason
        print("DONE", n, finish, flush=True)
    """, popen=True)
    try:
        assert proc.stdout.readline().strip() == "FIRST"
        twin.sh("systemctl stop edge-llm", timeout=120)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    done = out.split()
    assert done[0] == "DONE" and done[2] == "length" and int(done[1]) >= 100, (out, err)
    st = show(twin, "edge-llm", "ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert st == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0", "ExecMainCode": "1"}, st
    twin.sh("systemctl start edge-llm", timeout=300)


def _enable_test_settings(twin) -> None:
    """Small summary chunks (a job of several steps in seconds) and the hang hook; a restart."""
    twin.sh("grep -q debug_hooks /etc/edge-llm/edge-llm.toml || printf '\\n[daemon]\\ndebug_hooks = true\\n"
            "\\n[summarize]\\nchunk_tokens = 160\\nsummary_tokens = 24\\n' >> /etc/edge-llm/edge-llm.toml")
    twin.sh("systemctl restart edge-llm", timeout=300)


def test_kill_9_is_restarted_and_summary_jobs_resume(twin):
    _enable_test_settings(twin)
    restarts = int(show(twin, "edge-llm", "NRestarts")["NRestarts"])
    doc = " ".join(f"Section {i}. The harbour of Brightwater handled {100 + i} ships in year {1900 + i}; "
                   f"the keeper logged storms, repairs and the price of oil." for i in range(60))
    twin.sh("cat > /root/doc.txt", input=doc)
    job = json.loads(curl(twin, "/api/summaries?filename=doc.txt", "-X POST", "-H 'Content-Type: text/plain'",
                          "--data-binary @/root/doc.txt"))
    def progress():
        p = json.loads(curl(twin, f"/api/summaries/{job['id']}"))["progress"]
        return p if p["chunks_done"] >= 1 else None

    total = wait_for(progress, 300, "a chunk done", every=0.5)
    assert total["chunks_done"] < total["chunks_total"], total  # killed mid-job
    pid = show(twin, "edge-llm", "MainPID")["MainPID"]
    twin.sh(f"kill -9 {pid}")
    wait_for(lambda: int(show(twin, "edge-llm", "NRestarts")["NRestarts"]) > restarts, 60, "Restart=on-failure")
    twin.sh("systemctl start edge-llm", timeout=300)  # waits for the restarted daemon's READY=1
    assert show(twin, "edge-llm", "MainPID")["MainPID"] != pid
    done = wait_for(lambda: (j := json.loads(curl(twin, f"/api/summaries/{job['id']}")))["status"] in (
        "done", "failed") and j, 600, "the job to finish after the restart", every=2)
    assert done["status"] == "done" and done["result"].strip(), done
    # every chunk of every level summarized exactly once: the chunks done before the kill were kept
    q = ("import json, sqlite3, sys; db = sqlite3.connect('/var/lib/edge-llm/summaries.sqlite3'); print(json.dumps("
         "db.execute('SELECT level, COUNT(*), MIN(completions), MAX(completions) FROM chunks WHERE job_id = ? "
         "GROUP BY level ORDER BY level', (sys.argv[1],)).fetchall()))")
    levels = json.loads(twin.sh(f"python3 -c \"{q}\" {job['id']}").stdout)
    assert levels[0][:2] == [0, total["chunks_total"]], levels
    assert all(lo == hi == 1 for _, _, lo, hi in levels), levels


def test_watchdog_restarts_a_hung_engine(twin):
    # A drop-in shortens WatchdogSec= for the test (60 s in the unit); it lives in /run, so it
    # is gone at the next boot. The daemon pings every WatchdogSec/2 while the engine progresses.
    twin.sh("mkdir -p /run/systemd/system/edge-llm.service.d && printf '[Service]\\nWatchdogSec=8\\n' > "
            "/run/systemd/system/edge-llm.service.d/twin-watchdog.conf && systemctl daemon-reload")
    try:
        twin.sh("systemctl restart edge-llm", timeout=300)
        restarts = int(show(twin, "edge-llm", "NRestarts")["NRestarts"])
        pid = show(twin, "edge-llm", "MainPID")["MainPID"]
        assert json.loads(curl(twin, "/debug/hang?seconds=600", "-X POST"))
        wait_for(lambda: int(show(twin, "edge-llm", "NRestarts")["NRestarts"]) > restarts, 90,
                 "the watchdog to restart the unit")
        twin.sh("systemctl start edge-llm", timeout=300)
        assert show(twin, "edge-llm", "MainPID")["MainPID"] != pid
        assert json.loads(curl(twin, "/health"))["status"] == "ready"
        msgs = [str(e.get("MESSAGE")) for e in journal(twin, "edge-llm", "-n 200")]
        assert any("Watchdog timeout" in m for m in msgs), msgs[-20:]
    finally:
        twin.sh("rm -rf /run/systemd/system/edge-llm.service.d && systemctl daemon-reload")


def test_after_a_reboot_first_boot_does_not_run_again_and_the_appliance_starts(twin):
    nvpmodel_calls = standin_calls(twin).count("nvpmodel -m 0")
    clocks_calls = standin_calls(twin).count("jetson_clocks ")
    twin.stop()
    assert not twin.is_mounted()
    twin.boot()
    # edge-llm.service was After=jtop.service, and jetson-stats' jtop.service is After=
    # multi-user.target: a cycle, and systemd dropped one of the two start jobs at boot
    assert "ordering cycle" not in twin.console().lower(), twin.console()[-3000:]
    assert twin.sh("systemctl is-active edge-llm jtop").stdout.split() == ["active", "active"]  # enabled: at boot
    assert json.loads(curl(twin, "/health"))["status"] == "ready"
    assert standin_calls(twin).count("nvpmodel -m 0") == nvpmodel_calls  # install.sh did not run again
    assert standin_calls(twin).count("jetson_clocks ") == clocks_calls + 1  # edge-llm-clocks.service, every boot
    fb = show(twin, "edge-llm-firstboot", "ActiveState", "UnitFileState")
    assert fb == {"ActiveState": "inactive", "UnitFileState": "disabled"}, fb
