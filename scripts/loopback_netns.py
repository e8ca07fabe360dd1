"""Run a command in fresh user, network, PID and mount namespaces where only loopback exists.

Why: Ray binds its services (GCS, raylet, dashboard) to the machine's addresses; the test suite and
the Ray benchmark must talk to 127.0.0.1 only, so they run Ray in a network namespace whose one
interface is ``lo`` (brought up here: a new namespace starts with it down). The PID namespace
makes every process the command leaves behind die with it (``--kill-child``).

Usage: ``python scripts/loopback_netns.py CMD [ARGS...]`` (exit status of CMD; 128 + signal when it
was killed, like a shell). From Python: :func:`prefix` is the argv prefix, :func:`unavailable`
says why namespaces cannot be made here ("" when they can).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

# Namespace init: bring loopback up, run the command as a child, exit with its status.
LAUNCHER = """
import fcntl, socket, struct, subprocess, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
s.close()
rc = subprocess.call(sys.argv[1:])
sys.exit(128 - rc if rc < 0 else rc)
"""
UNSHARE = ("unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--mount", "--mount-proc",
           "--kill-child")


def prefix() -> list[str]:
    """argv to put before a command to run it in the loopback-only namespaces."""
    return [*UNSHARE, sys.executable, "-c", LAUNCHER]


def unavailable() -> str:
    """Why the namespaces cannot be created on this machine; "" when they can."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) not found"
    r = subprocess.run([*prefix(), "true"], capture_output=True, text=True, timeout=60)
    return "" if r.returncode == 0 else f"unshare -rnpfm does not work here: {r.stderr.strip()[:200]}"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(subprocess.call([*prefix(), *sys.argv[1:]]))
