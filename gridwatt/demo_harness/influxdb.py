"""Start a throwaway InfluxDB 1.x server (Debian's ``influxd``) on free local ports.

Used by the tests, the demo and the benchmarks; never by production deployments.
Run ``python -m gridwatt.demo_harness.influxdb`` to get one for manual experiments.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

INFLUXD_HINT = (
    "influxd (InfluxDB 1.x) not found on PATH; install it with `sudo apt-get install influxdb` "
    "(Debian/Ubuntu; from a source checkout scripts/setup.sh does it) or InfluxDB 1.x from influxdata.com"
)


#: GOGC of the harness's influxd. Go's default (100) collects whenever the heap has doubled; at 10,000
#: GPUs at 1 Hz (benchmarks/capacity.py) that took about a fifth of influxd's CPU (its own pprof
#: profile: gcBgMarkWorker and the mark assists of its write handlers). 400 collects a quarter as
#: often for a larger heap (1.2 GB -> about 2 GB there); the README "Sizing and scaling" says how an
#: operator sets it (``GOGC=400`` in /etc/default/influxdb, which the Debian unit reads).
INFLUXD_GOGC = 400


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_answering(
    proc: subprocess.Popen[bytes], url: str, status: int, timeout_s: float, what: str
) -> bool:
    """Poll ``url`` until it answers ``status`` (True) or ``timeout_s`` passes (False).

    Raises RuntimeError naming ``what`` as soon as ``proc`` exits, so a server that dies at start
    fails at once instead of after the timeout.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(
            url, timeout=1
        ) as resp:
            if resp.status == status:
                return True
        time.sleep(0.1)
    return False


class LocalInfluxDB:
    """An influxd process with its data in a temporary folder, stopped and removed on exit.

    ``auth_enabled`` turns on InfluxDB's authentication (create the first admin user with
    ``CREATE USER ... WITH ALL PRIVILEGES``); ``max_body_size`` (bytes, 0: unlimited) makes
    larger write requests fail with HTTP 413.
    """

    def __init__(self, data_dir: Path | None = None, port: int | None = None, *,
                 auth_enabled: bool = False, max_body_size: int = 0,
                 data_settings: dict[str, str] | None = None, gogc: int | None = INFLUXD_GOGC) -> None:
        self.auth_enabled = auth_enabled
        #: extra ``[data]`` settings, as TOML values (e.g. ``{"wal-fsync-delay": '"100ms"'}``)
        self.data_settings = dict(data_settings or {})
        #: the Go runtime's GOGC for influxd (None: the environment's, else Go's default 100)
        self.gogc = gogc
        self.max_body_size = max_body_size
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="gridwatt-influxdb-"))
        self.port = port or free_port()
        self.rpc_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        d = self.data_dir
        conf = d / "influxdb.conf"
        extra_data = "".join(f"  {k} = {v}\n" for k, v in self.data_settings.items())
        conf.write_text(
            f"""reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{d / 'meta'}"
  logging-enabled = false
[data]
  dir = "{d / 'data'}"
  wal-dir = "{d / 'wal'}"
  query-log-enabled = false
  trace-logging-enabled = false
  cache-snapshot-write-cold-duration = "10s"
{extra_data}[coordinator]
  log-queries-after = "0s"
[retention]
  enabled = false
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = {str(self.auth_enabled).lower()}
  log-enabled = false
  max-body-size = {self.max_body_size}
[logging]
  level = "warn"
  suppress-logo = true
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
"""
        )
        return conf

    def start(self, timeout_s: float = 30.0) -> LocalInfluxDB:
        influxd = shutil.which("influxd")
        if influxd is None:
            raise RuntimeError(INFLUXD_HINT)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self._write_config()
        log = (self.data_dir / "influxd.log").open("ab")
        env = None if self.gogc is None else {**os.environ, "GOGC": str(self.gogc)}
        self.proc = subprocess.Popen(
            [influxd, "-config", str(conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=env,
        )
        log_path = self.data_dir / "influxd.log"
        if wait_until_answering(self.proc, f"{self.url}/ping", 204, timeout_s, f"influxd (see {log_path})"):
            return self
        self.stop()
        raise RuntimeError(f"influxd did not answer /ping within {timeout_s:.0f} s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); the data folder stays until close()."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted by the kernel but never answered."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo pause() (SIGCONT)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalInfluxDB:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def main() -> None:
    with LocalInfluxDB() as db:
        print(f"InfluxDB 1.x at {db.url} (data in {db.data_dir}); Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
