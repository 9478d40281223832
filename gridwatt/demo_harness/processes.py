"""Start the collector and agents as real processes (used by the demo, the tests and the benchmarks)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from gridwatt.demo_harness.influxdb import free_port, wait_until_answering


def toml_str(value: str | Path) -> str:
    """A TOML basic string."""
    return json.dumps(str(value))


class CollectorProcess:
    """``gridwatt-collector serve`` in a subprocess, on free ports."""

    def __init__(self, config_path: Path, grpc_port: int, http_port: int, log_path: Path | None = None):
        self.config_path = config_path
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.log_path = log_path or config_path.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 30.0) -> CollectorProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gridwatt.collector.cli", "serve", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            if wait_until_answering(self.proc, f"{self.http_url}/healthz", 200, timeout_s, "collector"):
                return self
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{self.log_path.read_text()[-3000:]}") from None
        self.stop()
        raise RuntimeError(f"collector did not become healthy in {timeout_s} s; log: {self.log_path}")

    def freeze(self) -> None:
        """SIGSTOP: the process stops answering while its sockets stay open (a hung collector)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after freeze()."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (graceful) or SIGKILL, and wait; a frozen process is thawed first."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def new_collector_ports() -> tuple[int, int]:
    return free_port(), free_port()


def agent_command(config_path: Path, replay: bool = True, log_level: str = "INFO") -> list[str]:
    cmd = [sys.executable, "-m", "gridwatt.agent.cli", "run", "--config", str(config_path),
           "--log-level", log_level]
    return cmd + (["--replay"] if replay else [])


def start_agent(config_path: Path, replay: bool = True, quiet: bool = False,
                env: dict[str, str] | None = None, log_level: str = "INFO") -> subprocess.Popen[bytes]:
    """``gridwatt-agent run`` in a subprocess; output to the console unless quiet."""
    out = subprocess.DEVNULL if quiet else None
    full_env = {**os.environ, **(env or {})}
    cmd = agent_command(config_path, replay, log_level)
    return subprocess.Popen(cmd, stdout=out, stderr=out, env=full_env)


class AgentProcess:
    """``gridwatt-agent run`` in a subprocess with its log in a file, for tests that signal it."""

    def __init__(self, config_path: Path, replay: bool = False, log_path: Path | None = None,
                 log_level: str = "INFO", env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.replay = replay
        self.log_path = log_path or config_path.with_suffix(".log")
        self.log_level = log_level
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> AgentProcess:
        """Start; this run's log is what follows in the (appended) log file."""
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                agent_command(self.config_path, self.replay, self.log_level),
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(self.env or {})},
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        """This run's log so far."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as fh:
            fh.seek(self._log_offset)
            return fh.read().decode(errors="replace")

    def wait_for_log(self, pattern: str, timeout_s: float = 30.0, count: int = 1) -> re.Match[str]:
        """Wait until this run's log has ``count`` matches of the regex; the last one is returned."""
        deadline = time.monotonic() + timeout_s
        while True:
            matches = list(re.finditer(pattern, self.log_text()))
            if len(matches) >= count:
                return matches[count - 1]
            if time.monotonic() > deadline or not self.running:
                raise AssertionError(f"agent log has {len(matches)} of {count} matches of {pattern!r} "
                                     f"(running={self.running}):\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> int:
        """SIGKILL (a crash, or a node losing power) and reap."""
        assert self.proc is not None
        self.proc.kill()
        return self.proc.wait(timeout=30)

    def terminate(self, timeout_s: float = 30.0) -> tuple[int, float]:
        """SIGTERM and wait; returns (exit code, seconds from the signal to the exit)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.terminate()
        rc = self.proc.wait(timeout=timeout_s)
        return rc, time.monotonic() - t0

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def cleanup(self) -> None:
        """Kill it if it is still running (test teardown)."""
        if self.running:
            self.kill()
