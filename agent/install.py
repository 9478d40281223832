"""``gridwatt-agent install`` / ``uninstall``: set the agent up as a hardened systemd service.

install:
  1. finds the groups owning ``/dev/nvidia*`` (else ``video``/``render``, where they exist);
  2. creates the system user ``gridwatt`` in those groups (``useradd --system``), or adds the groups
     to an existing user (``usermod --append``);
  3. creates ``/var/lib/gridwatt`` (the spool) and ``/etc/gridwatt``;
  4. writes ``/etc/gridwatt/agent.toml`` from the example, unless it exists (it is never overwritten);
  5. installs ``/etc/systemd/system/gridwatt-agent.service`` with this agent's executable and groups;
  6. ``systemctl daemon-reload`` and ``systemctl enable --now gridwatt-agent.service``.

uninstall reverses it: stops and disables the service, removes the unit and (if install created
it) the user. The spool and the config stay unless ``--purge``.

Every path is below ``root`` (``--root DIR``, default ``/``). With another root nothing on the
running system is touched: ``useradd``/``usermod``/``userdel`` get ``--prefix DIR``, ``systemctl``
gets ``--root DIR`` (enable/disable only; no daemon-reload, no start), and no file is chowned
(systemd's ``StateDirectory=`` gives the spool folder to the user on start).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gridwatt.atomic_file import replace_file
from gridwatt.resources import deploy_file

UNIT_NAME = "gridwatt-agent.service"
DEFAULT_EXEC = "/opt/gridwatt/bin/gridwatt-agent"
FALLBACK_GROUPS = ("video", "render")


class InstallError(Exception):
    """A step failed; the message says which and why."""


Runner = Callable[[list[str]], None]


def run_command(argv: list[str]) -> None:
    """Run a command; InstallError with its stderr when it fails or does not exist."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise InstallError(f"{argv[0]} not found on PATH") from None
    if proc.returncode != 0:
        raise InstallError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")


def packaged_file(*parts: str) -> str:
    """A file of the repository's deploy/ folder, shipped as package data (gridwatt.deploy)."""
    return deploy_file(*parts).read_text()


def default_exec_path(program: str = "gridwatt-agent") -> Path | None:
    """The ``program`` executable (running this, on PATH, or beside the interpreter), when found."""
    argv0 = Path(sys.argv[0])
    if argv0.name == program and argv0.exists():
        return argv0.absolute()
    found = shutil.which(program)
    if found:
        return Path(found).absolute()
    beside = Path(sys.executable).parent / program
    return beside if beside.exists() else None


@dataclass
class InstallOptions:
    root: Path = Path("/")
    user: str = "gridwatt"
    #: Node name and collector address written into a new agent.toml (None: keep the example's).
    node: str | None = None
    collector: str | None = None
    exec_path: Path | None = None
    start: bool = True
    purge: bool = False
    dry_run: bool = False


@dataclass
class Installer:
    """Plans and performs install/uninstall; ``run`` executes commands, ``out`` reports progress."""

    opts: InstallOptions
    run: Runner = run_command
    out: Callable[[str], None] = print
    actions: list[str] = field(default_factory=list)

    # ---- paths ----
    @property
    def live(self) -> bool:
        """True when installing into the running system (root /)."""
        return self.opts.root.resolve() == Path("/")

    def path(self, absolute: str) -> Path:
        return self.opts.root / absolute.lstrip("/")

    @property
    def config_path(self) -> Path:
        return self.path("/etc/gridwatt/agent.toml")

    @property
    def unit_path(self) -> Path:
        return self.path(f"/etc/systemd/system/{UNIT_NAME}")

    @property
    def state_dir(self) -> Path:
        return self.path("/var/lib/gridwatt")

    @property
    def marker_path(self) -> Path:
        return self.path("/etc/gridwatt/.agent-install.json")

    # ---- users and groups (of the target root) ----
    def _db(self, name: str) -> list[list[str]] | None:
        if self.live:
            return None
        try:
            lines = self.path(f"/etc/{name}").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [line.split(":") for line in lines if line and not line.startswith("#")]

    def group_name(self, gid: int) -> str | None:
        db = self._db("group")
        if db is None:
            try:
                return grp.getgrgid(gid).gr_name
            except KeyError:
                return None
        return next((r[0] for r in db if len(r) > 2 and r[2] == str(gid)), None)

    def group_id(self, name: str) -> int | None:
        """The gid of group ``name`` in the target root, or None."""
        db = self._db("group")
        if db is None:
            try:
                return grp.getgrnam(name).gr_gid
            except KeyError:
                return None
        return next((int(r[2]) for r in db if len(r) > 2 and r[0] == name and r[2].isdigit()), None)

    def group_exists(self, name: str) -> bool:
        db = self._db("group")
        if db is None:
            try:
                grp.getgrnam(name)
            except KeyError:
                return False
            return True
        return any(r[0] == name for r in db)

    def user_exists(self, name: str) -> bool:
        db = self._db("passwd")
        if db is None:
            try:
                pwd.getpwnam(name)
            except KeyError:
                return False
            return True
        return any(r[0] == name for r in db)

    def gpu_groups(self) -> list[str]:
        """Groups owning the NVIDIA device nodes (not root), else video/render where they exist."""
        found: list[str] = []
        world_accessible = False
        for dev in sorted(self.path("/dev").glob("nvidia*")):
            try:
                st = dev.stat()
            except OSError:
                continue
            if st.st_mode & 0o006 == 0o006:
                world_accessible = True
            name = self.group_name(st.st_gid) if st.st_gid != 0 else None
            if name and name not in found:
                found.append(name)
        if found:
            return found
        if world_accessible:
            return []
        return [g for g in FALLBACK_GROUPS if self.group_exists(g)]

    # ---- steps ----
    def _do(self, text: str, fn: Callable[[], None] | None = None) -> None:
        self.actions.append(text)
        self.out(("would " if self.opts.dry_run else "") + text)
        if fn is not None and not self.opts.dry_run:
            fn()

    def _cmd(self, argv: list[str], check: bool = True) -> None:
        def go() -> None:
            try:
                self.run(argv)
            except InstallError as exc:
                if check:
                    raise
                self.out(f"  (ignored: {exc})")

        self._do("run: " + shlex.join(argv), go)

    def _prefix(self) -> list[str]:
        return [] if self.live else ["--prefix", str(self.opts.root)]

    def _systemctl(self, *args: str) -> list[str]:
        return ["systemctl", *([] if self.live else [f"--root={self.opts.root}"]), *args]

    def render_unit(self, groups: list[str], exec_path: Path | None) -> str:
        unit = packaged_file("systemd", UNIT_NAME)
        if exec_path is not None:
            unit = unit.replace(DEFAULT_EXEC, str(exec_path))
        line = f"SupplementaryGroups={' '.join(groups)}" if groups else ""
        unit = re.sub(r"^SupplementaryGroups=.*$", line, unit, count=1, flags=re.M)
        return unit.replace(
            "User=gridwatt\nGroup=gridwatt", f"User={self.opts.user}\nGroup={self.opts.user}"
        )

    def render_config(self, text: str | None = None) -> str:
        """The example (or ``text``, an existing config) with --node and --collector applied."""
        text = packaged_file("agent.example.toml") if text is None else text
        if self.opts.node:
            line = f"node = {json.dumps(self.opts.node)}"
            text, n = re.subn(r"^node = .*$", line, text, count=1, flags=re.M)
            if n == 0:
                text, n = re.subn(r"^# node = .*$", line, text, count=1, flags=re.M)
            if n == 0:
                text = line + "\n" + text
        if self.opts.collector:
            text = re.sub(r"^address = .*$", f"address = {json.dumps(self.opts.collector)}", text,
                          count=1, flags=re.M)
        return text

    def _update_config(self) -> None:
        """Apply --node/--collector to an existing config, keeping its mode and everything else."""
        old = self.config_path.read_text()
        new = self.render_config(old)
        if new != old:
            tmp = self.config_path.with_name(f".{self.config_path.name}.new")
            tmp.write_text(new)
            tmp.chmod(self.config_path.stat().st_mode & 0o7777)
            st = self.config_path.stat()
            if os.geteuid() == 0:
                os.chown(tmp, st.st_uid, st.st_gid)
            tmp.replace(self.config_path)

    def _chown(self, path: Path, user: str, group: str) -> None:
        if self.live and os.geteuid() == 0:
            shutil.chown(path, user, group)

    def _prepare_root(self) -> None:
        from gridwatt.rootprep import prepare_root

        for line in prepare_root(self.opts.root):
            self.out(f"  {line}")

    def install(self) -> None:
        """See the module docstring."""
        opts = self.opts
        if self.live and os.geteuid() != 0 and not opts.dry_run:
            raise InstallError("install needs root: run it with sudo (or --root DIR to fill a folder)")
        exec_path = opts.exec_path or default_exec_path()
        if exec_path is None:
            self.out(f"! gridwatt-agent executable not found; the unit keeps {DEFAULT_EXEC} (--exec)")
        elif str(exec_path).startswith(("/home/", "/root/")):
            self.out(f"! {exec_path} is under a home folder, which the unit hides (ProtectHome=yes): "
                     "install gridwatt under /opt or /usr/local")
        if not self.live:
            self._do(f"prepare {opts.root} as a system image where needed", self._prepare_root)
        groups = self.gpu_groups()
        created_user = False
        if self.user_exists(opts.user):
            if groups:
                self._cmd(["usermod", *self._prefix(), "--append", "--groups", ",".join(groups), opts.user])
        else:
            created_user = True
            self._cmd([
                "useradd", *self._prefix(), "--system", "--user-group", "--no-create-home",
                "--home-dir", "/var/lib/gridwatt", "--shell", "/usr/sbin/nologin",
                "--comment", "gridwatt GPU energy agent",
                *(["--groups", ",".join(groups)] if groups else []), opts.user,
            ])
        etc = self.config_path.parent

        def make_dirs() -> None:
            etc.mkdir(parents=True, exist_ok=True)
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.state_dir.chmod(0o750)
            self._chown(self.state_dir, opts.user, opts.user)

        self._do(f"create {self.state_dir} (0750, owner {opts.user}) and {etc}", make_dirs)
        wrote_config = False
        if self.config_path.exists() and (opts.node or opts.collector):
            given = ", ".join(f"{k} = {v}" for k, v in (("node", opts.node), ("collector.address",
                                                                              opts.collector)) if v)
            self._do(f"keep the existing {self.config_path}, setting {given} in it", self._update_config)
        elif self.config_path.exists():
            self._do(f"keep the existing {self.config_path}")
        else:
            wrote_config = True

            def write_config() -> None:
                gid = self.group_id(opts.user)
                if gid is None:
                    self.out(f"! group {opts.user} not found in {self.path('/etc/group')}: "
                             f"{self.config_path} stays root:root 0640, unreadable by the service")
                replace_file(self.config_path, self.render_config(), mode=0o640, owner=(0, gid or 0))

            self._do(f"write {self.config_path} from the example (root:{opts.user} 0640, atomically): "
                     "edit node and [collector]", write_config)
        unit = self.render_unit(groups, exec_path)

        def write_unit() -> None:
            self.unit_path.parent.mkdir(parents=True, exist_ok=True)
            self.unit_path.write_text(unit)
            self.unit_path.chmod(0o644)

        self._do(f"install {self.unit_path} (supplementary groups: "
                 f"{', '.join(groups) or 'none; /dev/nvidia* are world-accessible or absent'})", write_unit)
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

    def _marker(self) -> dict[str, object]:
        try:
            data = json.loads(self.marker_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def uninstall(self) -> None:
        """See the module docstring."""
        opts = self.opts
        if self.live and os.geteuid() != 0 and not opts.dry_run:
            raise InstallError("uninstall needs root: run it with sudo (or --root DIR)")
        marker = self._marker()
        user = str(marker.get("user", opts.user))
        if self.live:
            self._cmd(self._systemctl("disable", "--now", UNIT_NAME), check=False)
        else:
            self._cmd(self._systemctl("disable", UNIT_NAME), check=False)
        if self.unit_path.exists():
            self._do(f"remove {self.unit_path}", self.unit_path.unlink)
        if self.live:
            self._cmd(self._systemctl("daemon-reload"))
        if marker.get("created_user") and self.user_exists(user):
            self._cmd(["userdel", *self._prefix(), user])
        elif self.user_exists(user):
            self.out(f"keep user {user} (install did not create it)")
        if opts.purge:
            if self.state_dir.exists():
                self._do(f"remove {self.state_dir} (the spool)", lambda: shutil.rmtree(self.state_dir))
            if self.config_path.exists():
                self._do(f"remove {self.config_path}", self.config_path.unlink)
        else:
            if self.state_dir.exists():
                self.out(f"keep {self.state_dir} (the spool; --purge removes it)")
            if self.config_path.exists():
                self.out(f"keep {self.config_path} (--purge removes it)")
        if self.marker_path.exists():
            self._do(f"remove {self.marker_path}", self.marker_path.unlink)
        etc = self.config_path.parent
        if opts.purge and etc.exists() and not any(etc.iterdir()):
            self._do(f"remove the empty {etc}", lambda: _rmdir(etc))


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()
