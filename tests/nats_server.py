"""A private `nats-server -js` for the NATS bridge tests that need a broker they can kill and restart.

The shared server (``BK_TEST_NATS_URL``, ``nats://127.0.0.1:4222`` by default; `.ci/run` checks it
answers) serves the other tests. `NatsServer` runs its own ``nats-server`` on a free port with
JetStream storing in a temporary directory, so a test can kill it (SIGKILL: an outage, not a clean
shutdown) and start it again on the same port and store, as a broker restart would.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

NATS_URL = os.environ.get("BK_TEST_NATS_URL", "nats://127.0.0.1:4222")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class NatsServer:
    """`nats-server -js -sd <store>` on 127.0.0.1:`port`; `start()`, `kill()`, `stop()`."""

    def __init__(self, store: Path, port: int | None = None) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            pytest.skip("nats-server is not installed")
        self.binary = binary
        self.store = store
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> NatsServer:
        self.proc = subprocess.Popen(
            [self.binary, "-js", "-sd", str(self.store), "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:  # ready when it greets with INFO (a bounded wait for a process, not a timing test)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(5) == b"INFO ":
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server on port {self.port} did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the broker disappears mid-conversation."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        self.kill()
