"""STAND-IN for the hardware jetson-stats 4.2.12's jtop.service reads (device twin only,
tools/device_twin.py). The twin installs the real jetson-stats with pip, whose setup.py installs
its own jtop.service; a drop-in (tools/twin/jtop-hardware.conf) runs this instead of
`jtop --force`, whose server reads a Jetson's device tree, devfreq, power rails and tegrastats,
none of which an x86-64 container has (there it stops at /sys/devices/virtual/dmi/id).

Like the real service (jtop/service.py) it creates /run/jtop.sock, mode 0660, owned root:jtop,
and logs that it started; it serves no data: a jtop client's connection fails, and the
daemon's telemetry falls back to psutil, as it does whenever jtop.service cannot be reached."""

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
