"""sd_notify(3) without a dependency: tell systemd the agent is ready, and that its loop is alive.

systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace) to a
``Type=notify`` service; each notification is one datagram of ``KEY=value`` lines. With
``WatchdogSec=`` it also passes ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``): the service must send
``WATCHDOG=1`` more often than that, or systemd restarts it. Without ``NOTIFY_SOCKET`` every call
is a no-op, so the agent runs the same outside systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("gridwatt.agent.sdnotify")


def _address(raw: str) -> str | bytes:
    return b"\0" + raw[1:].encode() if raw.startswith("@") else raw


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; False when not under systemd or on error."""
    env = os.environ if environ is None else environ
    raw = env.get("NOTIFY_SOCKET", "")
    if not raw or raw[0] not in "/@":
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # never blocks the agent's loop: a full queue at the receiver drops this one notification
            sock.sendto(state.encode(), socket.MSG_DONTWAIT, _address(raw))
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", state, exc)
        return False
    return True


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout systemd set for this process, in seconds; None when there is none."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1e6


class Notifier:
    """READY once, then WATCHDOG at most every ``min_interval_s`` (a quarter of the watchdog timeout).

    ``enabled`` is False outside systemd, and then every method returns at once.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env = dict(os.environ if environ is None else environ)
        self.enabled = bool(self._env.get("NOTIFY_SOCKET"))
        timeout = watchdog_interval_s(self._env)
        self.min_interval_s = timeout / 4 if timeout else 1.0
        self._last_watchdog = float("-inf")

    def ready(self, status: str = "") -> None:
        """The source is up and the agent is sampling."""
        if self.enabled:
            notify("READY=1" + (f"\nSTATUS={status}" if status else ""), self._env)

    def watchdog(self) -> None:
        """Called on every tick of the main loop; sends WATCHDOG=1 when it is due."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_watchdog >= self.min_interval_s:
            self._last_watchdog = now
            notify("WATCHDOG=1", self._env)

    def stopping(self) -> None:
        """A stop was asked (SIGTERM): the agent is draining its spool and will exit."""
        if self.enabled:
            notify("STOPPING=1", self._env)
