"""``gridwatt-collector``: run the collector."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from gridwatt import __version__
from gridwatt.collector.config import CollectorConfig
from gridwatt.collector.intensity.csv_file import IntensityFileError
from gridwatt.collector.pue import PueFileError
from gridwatt.collector.store import QueryError
from gridwatt.configfile import ConfigError, load_config
from gridwatt.logsetup import setup_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gridwatt-collector", description="gridwatt collector")
    p.add_argument("--version", action="version", version=f"gridwatt-collector {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="ingest agents' samples, store them, answer queries")
    serve.add_argument("--config", required=True, help="collector config file (TOML)")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="least severe log lines shown (default INFO)")
    serve.add_argument("--log-format", choices=["text", "json"], default=None,
                       help="text (default, or $GRIDWATT_LOG_FORMAT) or json: one JSON object per line")
    check = sub.add_parser("check-config", help="validate a config file and its data files, then exit")
    check.add_argument("--config", required=True, help="collector config file (TOML) to check")
    sub.add_parser(
        "hash-token",
        help="read a node token on stdin, print the sha256:<hex> form to keep in auth.tokens_file",
        description="Reads one node token on stdin and prints sha256:<hex>; put `NODE sha256:<hex>` "
        "lines in [auth] tokens_file so the collector host never stores the token itself.",
    )
    init = sub.add_parser("init-db", help="create the InfluxDB 1.x database, retention policies and user")
    init.add_argument("--config", required=True, help="collector config file (TOML)")
    init.add_argument("--admin-user", help="InfluxDB admin (password in $GRIDWATT_INFLUX_ADMIN_PASSWORD "
                      "or --admin-password-file); omit where InfluxDB has no auth")
    init.add_argument("--admin-password-file", type=Path, help="file holding the admin's password")
    for name, text in (("install", "install as a systemd service (user, config, unit; enable --now)"),
                       ("uninstall", "stop and remove the service (keeps config and state unless --purge)")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--root", type=Path, default=Path("/"),
                        help="install into this folder instead of / (for images and tests)")
        sp.add_argument("--user", default="gridwatt", help="system user to run as (default gridwatt)")
        sp.add_argument("--dry-run", action="store_true", help="print what would be done, do nothing")
        if name == "install":
            sp.add_argument("--exec", dest="exec_path", type=Path,
                            help="gridwatt-collector executable for ExecStart (default: this one)")
            sp.add_argument("--no-start", action="store_true", help="enable but do not start it")
        else:
            sp.add_argument("--purge", action="store_true", help="also remove collector.toml and alert state")
    return p


def _install(args: argparse.Namespace) -> int:
    from gridwatt.agent.install import InstallError
    from gridwatt.collector.install import make_installer

    installer = make_installer(
        args.root, args.user, args.dry_run, getattr(args, "exec_path", None),
        start=not getattr(args, "no_start", False), purge=getattr(args, "purge", False),
    )
    try:
        installer.install() if args.command == "install" else installer.uninstall()
    except (InstallError, OSError) as exc:
        print(f"gridwatt-collector {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _init_db(args: argparse.Namespace) -> int:
    import os

    from gridwatt.collector.initdb import InfluxAdmin, InitDbError, init_db
    from gridwatt.configfile import read_secret

    try:
        config = load_config(args.config, CollectorConfig)
        password = read_secret(os.environ.get("GRIDWATT_INFLUX_ADMIN_PASSWORD"), args.admin_password_file,
                               "admin password")
        admin = InfluxAdmin(config.influxdb.url, args.admin_user, password, config.influxdb.timeout_s)
        init_db(config.influxdb, admin)
    except ConfigError as exc:
        print(f"gridwatt-collector: {exc}", file=sys.stderr)
        return 2
    except InitDbError as exc:
        print(f"gridwatt-collector init-db: {exc}", file=sys.stderr)
        return 1
    return 0


def check_state_file(path: Path) -> None:
    """ConfigError unless the alert state file can be written (its folder takes a new file)."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".check"):
            pass
        if path.exists() and not os.access(path, os.R_OK):
            raise PermissionError(13, "the state file is not readable")
    except OSError as exc:
        raise ConfigError(
            f"alerts.state_file {path}: cannot write alert state there ({exc.strerror or exc}); run as "
            "the service user, and give the unit StateDirectory=gridwatt (the shipped one has it) or "
            "ReadWritePaths= for that folder"
        ) from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("install", "uninstall"):
        return _install(args)
    if args.command == "init-db":
        return _init_db(args)
    setup_logging(getattr(args, "log_level", "INFO"), getattr(args, "log_format", None))
    if args.command == "hash-token":
        from gridwatt.collector.auth import hash_token

        token = sys.stdin.readline().strip()
        if not token:
            print("gridwatt-collector: no token on stdin", file=sys.stderr)
            return 2
        print(hash_token(token))
        return 0
    try:
        config = load_config(args.config, CollectorConfig)
        from gridwatt.collector.auth import NodeAuth
        from gridwatt.collector.wiring import build_topology

        build_topology(config)  # loads intensity and PUE files: their errors surface before serving
        if config.alerts.state_file:
            check_state_file(Path(config.alerts.state_file))
        auth = NodeAuth.from_config(config.auth)
        from gridwatt.collector.read_auth import ReadAuth

        ReadAuth.from_config(config.reads)  # a bad principals file stops here, before serving
        if args.command == "check-config":
            print(f"{args.config}: OK ({len(config.zones)} zones, {len(config.racks)} racks, "
                  f"{auth.token_count} node tokens)")
            return 0
        from gridwatt.collector.server import serve

        asyncio.run(serve(config))
    except (ConfigError, IntensityFileError, PueFileError) as exc:
        print(f"gridwatt-collector: {exc}", file=sys.stderr)
        return 2
    except (QueryError, OSError) as exc:
        print(f"gridwatt-collector: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
