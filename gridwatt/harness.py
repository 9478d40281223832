"""Start the collector and agents as real processes (used by the demo, the tests and the benchmarks)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from gridwatt.local_influxdb import free_port


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
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"collector exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}"
                )
            with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(
                f"{self.http_url}/healthz", timeout=1
            ) as resp:
                if resp.status == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"collector did not become healthy in {timeout_s} s; log: {self.log_path}")

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
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
