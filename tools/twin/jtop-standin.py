"""STAND-IN for jetson-stats 4.2.12's jtop.service (device twin only, tools/device_twin.py).

The real service (jtop/service.py, run as `jtop --force` by jtop.service) creates
/run/jtop.sock, mode 0660, owned root:jtop, and serves tegrastats data to jtop clients over
multiprocessing managers. This stand-in makes the socket with the same path, mode and group,
logs that it started, and serves nothing: the twin has no `jtop` Python package, so the
daemon's telemetry falls back to psutil there, as it does when jtop cannot be imported."""

import grp
import os
import signal
import socket
import sys
import time

SOCK = "/run/jtop.sock"
LOG = "/var/log/edge-llm-twin/standins.log"

os.makedirs(os.path.dirname(LOG), exist_ok=True)
with open(LOG, "a") as f:
    f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} jtop.service {' '.join(sys.argv[1:])}\n")
if os.path.exists(SOCK):
    os.unlink(SOCK)
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(SOCK)
os.chown(SOCK, 0, grp.getgrnam("jtop").gr_gid)
os.chmod(SOCK, 0o660)
server.listen()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("jtop stand-in: listening on /run/jtop.sock (serves no data)", flush=True)
while True:
    conn, _ = server.accept()
    conn.close()
