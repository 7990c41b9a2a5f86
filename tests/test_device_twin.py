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
# install.sh exactly as the flash overlay's first-boot unit runs it
INSTALL = "$(sed -n 's/^ExecStart=//p' /etc/systemd/system/edge-llm-firstboot.service)"


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
        (t.work / "upper/var/swap-edge-llm").unlink(missing_ok=True)  # half the RAM, kept by pytest's tmp dirs


def show(twin, unit: str, *props: str) -> dict[str, str]:
    out = twin.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def curl(twin, path: str, *args: str, check: bool = True) -> str:
    return twin.sh(f"curl -sS --max-time 120 {' '.join(args)} {API}{path}", check=check).stdout


def client(twin, code: str, timeout: float = 180, popen: bool = False):
    """The official openai client of this machine, run in the twin's network namespace; the
    code sees `c` (the client) and `MODEL` (the daemon's model id)."""
    prog = (
        f"from openai import OpenAI\nc = OpenAI(base_url='{API}/v1', api_key='none')\n"
        "MODEL = c.models.list().data[0].id\n"
    ) + textwrap.dedent(code)
    if popen:
        return subprocess.Popen(
            twin.netns_argv([sys.executable, "-c", prog]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(
        twin.netns_argv([sys.executable, "-c", prog]), capture_output=True, text=True, timeout=timeout
    )


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
    # the device's own path: what flash_overlay.py wrote, no --cpu, no --swap-gb
    argv = twin.sh(f"echo {INSTALL}").stdout.split()
    assert argv[1:] == ["--headless", "--kiosk", "--maxn", "--wheelhouse", "/opt/edge-llm/wheelhouse"], argv
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
    assert "jtop.service --force" in calls  # jetson-stats' unit, started, with the hardware stand-in
    # swap: half of the RAM, 4 to 16 GiB (no model loaded); a container may not turn it on
    ram_kb = int(twin.sh("awk '/^MemTotal:/ {print $2}' /proc/meminfo").stdout)
    gib = min(16, max(4, ram_kb // 2 // (1 << 20)))
    assert twin.sh("stat -c %s /var/swap-edge-llm").stdout.strip() == str(gib << 30)
    assert "/var/swap-edge-llm none swap sw 0 0" in twin.sh("cat /etc/fstab").stdout
    swapped_on = "/var/swap-edge-llm" in twin.sh("swapon --show=NAME --noheadings").stdout
    assert swapped_on or "swapon /var/swap-edge-llm failed (systemd-nspawn)" in log


def test_jetson_stats_sdist_installed_by_pip_at_first_boot_with_its_service(twin):
    """pip3 ran jetson-stats 4.2.12's setup.py for real inside the first-boot unit: its blocking
    `systemctl start jtop.service` (After=multi-user.target) waited for the unit itself."""
    assert "Version: 4.2.12" in twin.sh("pip3 show jetson-stats").stdout
    assert twin.sh("python3 -c 'import jtop; print(jtop.__version__)'").stdout.strip() == "4.2.12"
    # the unit is the one setup.py copied from the sdist; the twin adds only its hardware drop-in
    unit = twin.sh("systemctl cat jtop.service").stdout
    assert "ExecStart=/usr/local/bin/jtop --force" in unit and "After=multi-user.target" in unit
    twin.sh("cmp /etc/systemd/system/jtop.service /usr/local/jetson_stats/jtop.service")
    assert "jtop" in twin.sh("getent group jtop").stdout  # made by setup.py (set_service_permission)
    wait_for(lambda: twin.sh("systemctl is-active jtop", check=False).stdout.strip() == "active", 60, "jtop.service")
    assert twin.sh("stat -c '%a %G' /run/jtop.sock").stdout.split() == ["660", "jtop"]


def test_cuda_build_was_given_the_nvcc_that_is_on_no_path(twin):
    """install.sh without --cpu builds llama.cpp for CUDA: JetPack's nvcc (a STAND-IN here, where
    nvidia-jetpack puts it) is on no unit's PATH; install.sh checked it and passed CUDACXX on.
    The build itself is not run: the CPU wheel stands in under the CUDA flavour (README)."""
    assert twin.sh("command -v nvcc", check=False).returncode != 0
    assert "nvcc --version" in standin_calls(twin)
    flags = twin.sh("cat /opt/edge-llm/venv/.llama-cpp-cmake-args").stdout.strip()
    assert flags == device_twin.CUDA_FLAGS


def test_kiosk_opens_its_wayland_socket_under_real_cage(twin):
    """PAMName=login runs pam_systemd, which set XDG_RUNTIME_DIR=/run/user/<uid> over the unit's
    Environment=, and ProtectHome=yes hides /run/user: cage could not open its socket."""
    twin.sh("cmp /etc/systemd/system/edge-llm-kiosk.service /opt/edge-llm/src/systemd/edge-llm-kiosk.service")
    sock = "/run/edge-llm-kiosk/wayland-0"
    wait_for(lambda: twin.sh(f"test -S {sock}", check=False).returncode == 0, 120, f"cage's socket {sock}")
    assert twin.sh(f"stat -c %U {sock}").stdout.strip() == "edge-llm-kiosk"
    assert show(twin, "edge-llm-kiosk", "ActiveState")["ActiveState"] == "active"
    pid = show(twin, "edge-llm-kiosk", "MainPID")["MainPID"]
    assert twin.sh(f"cat /proc/{pid}/comm").stdout.strip() == "cage"
    env = twin.sh(f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout.splitlines()
    assert "XDG_RUNTIME_DIR=/run/edge-llm-kiosk" in env and "XDG_SESSION_CLASS=user" in env  # a PAM session
    assert twin.sh("loginctl list-sessions --no-legend").stdout.split()[2] == "edge-llm-kiosk"
    # the daemon restarted: the kiosk goes with it and comes back, and leaves no browser behind
    # (pam_systemd keeps the session's processes in a logind scope, outside the unit's cgroup)
    twin.sh("systemctl restart edge-llm", timeout=300)
    wait_for(lambda: twin.sh(f"test -S {sock}", check=False).returncode == 0, 300, "the kiosk after a restart")
    wait_for(lambda: twin.sh("pgrep -c -u edge-llm-kiosk -x cog", check=False).stdout.strip() == "1", 30, "one browser")
    assert show(twin, "edge-llm-kiosk", "MainPID")["MainPID"] != pid
    # cog paints in software here, most of a CPU core: off for the rest of this boot
    twin.sh("systemctl mask --runtime edge-llm-kiosk && systemctl stop edge-llm-kiosk")
    assert twin.sh("pgrep -u edge-llm-kiosk", check=False).stdout.strip() == ""


def test_mpi4py_initializes_under_the_units_sandbox(twin):
    """tensorrt_llm imports mpi4py at import time (tensorrt_llm/_utils.py: MPI.COMM_WORLD and a
    Split_type), which initializes OpenMPI. Run that under edge-llm.service's own sandbox: every
    line of its [Service] section but how it starts and is supervised (Debian's OpenMPI 4.1 and
    mpi4py, not the device's)."""
    unit = twin.sh("cat /etc/systemd/system/edge-llm.service").stdout
    service = unit.split("[Service]", 1)[1].split("[Install]", 1)[0]
    skip = ("Type=", "NotifyAccess=", "ExecStart=", "ExecReload=", "WatchdogSec=", "Restart", "TimeoutStartSec=")
    keep = [line for line in service.splitlines() if line.strip() and not line.startswith(("#", *skip))]
    probe = (
        "from mpi4py import MPI; c = MPI.COMM_WORLD; h = c.Split_type(9); "
        "print('MPI', c.Get_rank(), c.Get_size(), h.Get_size(), flush=True)"
    )
    twin.sh(
        "cat > /run/systemd/system/edge-llm-mpi-probe.service",
        input="\n".join(["[Service]", "Type=oneshot", f'ExecStart=/usr/bin/python3 -c "{probe}"', *keep]) + "\n",
    )
    try:
        twin.sh("systemctl daemon-reload")
        r = twin.sh("systemctl start edge-llm-mpi-probe", check=False, timeout=120)
        out = [e.get("MESSAGE") for e in journal(twin, "edge-llm-mpi-probe")]
        assert r.returncode == 0, (r.stderr, out[-20:])
        assert "MPI 0 1 1" in out, out[-20:]
    finally:
        twin.sh("rm -f /run/systemd/system/edge-llm-mpi-probe.service && systemctl daemon-reload")


def test_install_sh_is_idempotent(twin):
    before = twin.sh("md5sum /etc/edge-llm/edge-llm.toml /etc/systemd/system/*.service /etc/fstab").stdout
    out = twin.sh(INSTALL + " 2>&1", timeout=600).stdout
    for acted in (
        "creating the system user",
        "installing apt packages",
        "creating /opt/edge-llm/venv",
        "writing /etc/edge-llm",
        "swap file /var/swap-edge-llm of",
        "adding edge-llm to group jtop",
    ):
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
    r = client(
        twin,
        """
        r = c.chat.completions.create(model=MODEL, temperature=0, max_tokens=12,
                                      messages=[{"role": "user", "content": "Say hello."}])
        print(r.model_dump_json())
    """,
    )
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
        twin.sh(
            "printf '\\n[limits]\\nmax_queue = 77\\n' >> /etc/edge-llm/edge-llm.toml && "
            'sed -i \'s/^host = "127.0.0.1"/host = "127.0.0.1"\\nport = 8001/\' /etc/edge-llm/edge-llm.toml'
        )
        twin.sh("systemctl reload edge-llm")
        line = wait_for(
            lambda: [
                e["MESSAGE"]
                for e in journal(twin, "edge-llm", "-n 50")
                if str(e.get("MESSAGE", "")).startswith("SIGHUP:")
            ],
            20,
            "the reload's log line",
        )
        assert line[-1] == "SIGHUP: applied limits.max_queue; needs a restart: server.port", line
        assert show(twin, "edge-llm", "MainPID")["MainPID"] == pid  # reloaded in place
        assert json.loads(curl(twin, "/health"))["status"] == "ready"  # still on the old port
    finally:
        twin.sh("cp /root/edge-llm.toml.orig /etc/edge-llm/edge-llm.toml && systemctl reload edge-llm")


def test_stop_drains_an_in_flight_stream_and_exits_0(twin):
    proc = client(
        twin,
        """
        import sys
        s = c.chat.completions.create(model=MODEL, temperature=0, max_tokens=150, stream=True,
                                      stream_options={"include_usage": True},
                                      messages=[{"role": "user", "content": "Write a long story about a lighthouse."}])
        n, finish, tokens = 0, None, 0
        for ch in s:
            if ch.choices and ch.choices[0].delta.content:
                n += 1
                if n == 1:
                    print("FIRST", flush=True)
            if ch.choices and ch.choices[0].finish_reason:
                finish = ch.choices[0].finish_reason
            if ch.usage:
                tokens = ch.usage.completion_tokens
        print("DONE", tokens, finish, flush=True)
    """,
        popen=True,
    )
    try:
        assert proc.stdout.readline().strip() == "FIRST"
        twin.sh("systemctl stop edge-llm", timeout=120)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    done = out.split()
    assert done == ["DONE", "150", "length"], (out, err)  # every token (events carry several: stream interval)
    st = show(twin, "edge-llm", "ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert st == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0", "ExecMainCode": "1"}, st
    twin.sh("systemctl start edge-llm", timeout=300)


def _enable_test_settings(twin) -> None:
    """Small summary chunks (a job of several steps in seconds), two in flight at once, and the
    hang hook; a restart. Two at a time: with as many in flight as the plan's batch size (which
    follows this machine's calibration), chunks of one length capped at one summary length can all
    end in one step, level after level, and the kill test once saw its job only when it was done
    (1 of 1 chunks: nothing left to kill it in the middle of)."""
    twin.sh(
        "grep -q debug_hooks /etc/edge-llm/edge-llm.toml || printf '\\n[daemon]\\ndebug_hooks = true\\n"
        "\\n[summarize]\\nchunk_tokens = 160\\nsummary_tokens = 24\\nparallel = 2\\n' >> /etc/edge-llm/edge-llm.toml"
    )
    twin.sh("systemctl restart edge-llm", timeout=300)


def test_kill_9_is_restarted_and_summary_jobs_resume(twin):
    _enable_test_settings(twin)
    restarts = int(show(twin, "edge-llm", "NRestarts")["NRestarts"])
    doc = " ".join(
        f"Section {i}. The harbour of Brightwater handled {100 + i} ships in year {1900 + i}; "
        f"the keeper logged storms, repairs and the price of oil."
        for i in range(60)
    )
    twin.sh("cat > /root/doc.txt", input=doc)
    job = json.loads(
        curl(
            twin,
            "/api/summaries?filename=doc.txt",
            "-X POST",
            "-H 'Content-Type: text/plain'",
            "--data-binary @/root/doc.txt",
        )
    )

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
    done = wait_for(
        lambda: (j := json.loads(curl(twin, f"/api/summaries/{job['id']}")))["status"] in ("done", "failed") and j,
        600,
        "the job to finish after the restart",
        every=2,
    )
    assert done["status"] == "done" and done["result"].strip(), done
    # every chunk of every level summarized exactly once: the chunks done before the kill were kept
    q = (
        "import json, sqlite3, sys; db = sqlite3.connect('/var/lib/edge-llm/summaries.sqlite3'); print(json.dumps("
        "db.execute('SELECT level, COUNT(*), MIN(completions), MAX(completions) FROM chunks WHERE job_id = ? "
        "GROUP BY level ORDER BY level', (sys.argv[1],)).fetchall()))"
    )
    levels = json.loads(twin.sh(f'python3 -c "{q}" {job["id"]}').stdout)
    assert levels[0][:2] == [0, total["chunks_total"]], levels
    assert all(lo == hi == 1 for _, _, lo, hi in levels), levels


def test_watchdog_restarts_a_hung_engine(twin):
    # A drop-in shortens WatchdogSec= for the test (60 s in the unit); it lives in /run, so it
    # is gone at the next boot. The daemon pings every WatchdogSec/2 while the engine progresses.
    twin.sh(
        "mkdir -p /run/systemd/system/edge-llm.service.d && printf '[Service]\\nWatchdogSec=8\\n' > "
        "/run/systemd/system/edge-llm.service.d/twin-watchdog.conf && systemctl daemon-reload"
    )
    try:
        twin.sh("systemctl restart edge-llm", timeout=300)
        restarts = int(show(twin, "edge-llm", "NRestarts")["NRestarts"])
        pid = show(twin, "edge-llm", "MainPID")["MainPID"]
        assert json.loads(curl(twin, "/debug/hang?seconds=600", "-X POST"))
        wait_for(
            lambda: int(show(twin, "edge-llm", "NRestarts")["NRestarts"]) > restarts,
            90,
            "the watchdog to restart the unit",
        )
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
    wait_for(
        lambda: twin.sh("test -S /run/edge-llm-kiosk/wayland-0", check=False).returncode == 0,
        120,
        "the kiosk after the reboot",
    )
    assert json.loads(curl(twin, "/health"))["status"] == "ready"
    assert standin_calls(twin).count("nvpmodel -m 0") == nvpmodel_calls  # install.sh did not run again
    assert standin_calls(twin).count("jetson_clocks ") == clocks_calls + 1  # edge-llm-clocks.service, every boot
    fb = show(twin, "edge-llm-firstboot", "ActiveState", "UnitFileState")
    assert fb == {"ActiveState": "inactive", "UnitFileState": "disabled"}, fb
