"""``gridwatt-collector install`` / ``uninstall``: set the collector up as a hardened systemd service.

install:
  1. prepares an empty ``--root`` (``etc/passwd`` and friends with a root entry) so ``useradd`` works;
  2. creates the system user ``gridwatt`` (``useradd --system``) unless it exists;
  3. creates ``/var/lib/gridwatt`` (alert state) and ``/etc/gridwatt``;
  4. writes ``/etc/gridwatt/collector.toml`` from the example, unless it exists (never overwritten);
  5. installs ``/etc/systemd/system/gridwatt-collector.service`` with this collector's executable;
  6. ``systemctl daemon-reload`` and ``systemctl enable [--now] gridwatt-collector.service``.

uninstall stops and disables the service, removes the unit and (if install created it) the user; the
config and the alert state stay unless ``--purge``. ``--root`` and ``--dry-run`` work as for the agent
(``gridwatt/agent/install.py``), whose user and systemctl handling this reuses.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from gridwatt.agent.install import (
    Installer,
    InstallError,
    InstallOptions,
    default_exec_path,
    packaged_file,
)

UNIT_NAME = "gridwatt-collector.service"
DEFAULT_EXEC = "/opt/gridwatt/bin/gridwatt-collector"


@dataclass
class CollectorInstaller(Installer):
    """Install/uninstall of the collector; paths, user and systemctl handling as the agent's."""

    @property
    def config_path(self) -> Path:
        return self.path("/etc/gridwatt/collector.toml")

    @property
    def unit_path(self) -> Path:
        return self.path(f"/etc/systemd/system/{UNIT_NAME}")

    @property
    def marker_path(self) -> Path:
        return self.path("/etc/gridwatt/.collector-install.json")

    def render_unit(self, groups: list[str], exec_path: Path | None) -> str:
        unit = packaged_file("systemd", UNIT_NAME)
        if exec_path is not None:
            unit = unit.replace(DEFAULT_EXEC, str(exec_path))
        return unit.replace("User=gridwatt\nGroup=gridwatt", f"User={self.opts.user}\nGroup={self.opts.user}")

    def install(self) -> None:
        """See the module docstring."""
        opts = self.opts
        if self.live and not opts.dry_run and os.geteuid() != 0:
            raise InstallError("install needs root: run it with sudo (or --root DIR to fill a folder)")
        if not self.live:
            self._do(f"prepare {opts.root} as a system image where needed", self._prepare_root)
        exec_path = opts.exec_path or default_exec_path("gridwatt-collector")
        if exec_path is None:
            self.out(f"! gridwatt-collector executable not found; the unit keeps {DEFAULT_EXEC} (--exec)")
        elif str(exec_path).startswith(("/home/", "/root/")):
            self.out(f"! {exec_path} is under a home folder, which the unit hides (ProtectHome=yes): "
                     "install gridwatt under /opt or /usr/local")
        created_user = False
        if not self.user_exists(opts.user):
            created_user = True
            self._cmd([
                "useradd", *self._prefix(), "--system", "--user-group", "--no-create-home",
                "--home-dir", "/var/lib/gridwatt", "--shell", "/usr/sbin/nologin",
                "--comment", "gridwatt collector", opts.user,
            ])
        etc = self.config_path.parent

        def make_dirs() -> None:
            etc.mkdir(parents=True, exist_ok=True)
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.state_dir.chmod(0o750)
            self._chown(self.state_dir, opts.user, opts.user)

        self._do(f"create {self.state_dir} (0750, owner {opts.user}; alert state) and {etc}", make_dirs)
        wrote_config = False
        if self.config_path.exists():
            self._do(f"keep the existing {self.config_path}")
        else:
            wrote_config = True

            def write_config() -> None:
                self.config_path.write_text(packaged_file("collector.example.toml"))
                self.config_path.chmod(0o640)
                self._chown(self.config_path, "root", opts.user)

            self._do(f"write {self.config_path} from the example (0640): edit [influxdb], [[zones]], "
                     "[[racks]], then run `gridwatt-collector init-db`", write_config)
        unit = self.render_unit([], exec_path)

        def write_unit() -> None:
            self.unit_path.parent.mkdir(parents=True, exist_ok=True)
            self.unit_path.write_text(unit)
            self.unit_path.chmod(0o644)

        self._do(f"install {self.unit_path} (StateDirectory=gridwatt: /var/lib/gridwatt is writable)",
                 write_unit)
        if self.live:
            self._cmd(self._systemctl("daemon-reload"))
            self._cmd(self._systemctl("enable", *(["--now"] if opts.start else []), UNIT_NAME))
        else:
            self._cmd(self._systemctl("enable", UNIT_NAME))
        previous = self._marker()

        def write_marker() -> None:
            state = {"user": opts.user, "created_user": created_user or previous.get("created_user", False),
                     "wrote_config": wrote_config or previous.get("wrote_config", False)}
            self.marker_path.write_text(json.dumps(state) + "\n")

        self._do(f"record what was done in {self.marker_path}", write_marker)

    def uninstall(self) -> None:
        """See the module docstring."""
        opts = self.opts
        if self.live and not opts.dry_run and os.geteuid() != 0:
            raise InstallError("uninstall needs root: run it with sudo (or --root DIR)")
        marker = self._marker()
        user = str(marker.get("user", opts.user))
        self._cmd(self._systemctl("disable", *(["--now"] if self.live else []), UNIT_NAME), check=False)
        if self.unit_path.exists():
            self._do(f"remove {self.unit_path}", self.unit_path.unlink)
        if self.live:
            self._cmd(self._systemctl("daemon-reload"))
        agent_installed = self.path("/etc/gridwatt/.agent-install.json").exists()
        if marker.get("created_user") and self.user_exists(user) and not agent_installed:
            self._cmd(["userdel", *self._prefix(), user])
        elif self.user_exists(user):
            self.out(f"keep user {user}")
        if opts.purge:
            if self.config_path.exists():
                self._do(f"remove {self.config_path}", self.config_path.unlink)
            state = self.state_dir / "alerts-state.json"
            if state.exists():
                self._do(f"remove {state}", state.unlink)
        elif self.config_path.exists():
            self.out(f"keep {self.config_path} and {self.state_dir} (--purge removes them)")
        if self.marker_path.exists():
            self._do(f"remove {self.marker_path}", self.marker_path.unlink)


def make_installer(root: Path, user: str, dry_run: bool, exec_path: Path | None = None,
                   start: bool = True, purge: bool = False) -> CollectorInstaller:
    """The installer for the CLI's options."""
    return CollectorInstaller(InstallOptions(root=root, user=user, dry_run=dry_run, exec_path=exec_path,
                                             start=start, purge=purge))
