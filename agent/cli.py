"""``gridwatt-agent``: run the node agent; check a node; install or uninstall it as a service."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from gridwatt import __version__
from gridwatt.agent.config import AgentConfig
from gridwatt.agent.sources.base import SourceError
from gridwatt.agent.sources.sim.trace import TraceError
from gridwatt.agent.spool import SpoolError
from gridwatt.configfile import ConfigError, load_config
from gridwatt.logsetup import setup_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gridwatt-agent", description="gridwatt GPU node agent")
    p.add_argument("--version", action="version", version=f"gridwatt-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="measure the GPUs and stream samples to the collector")
    run.add_argument("--config", required=True, help="agent config file (TOML)")
    run.add_argument(
        "--replay",
        action="store_true",
        help="simulated source only: play the trace as fast as possible with its own timestamps, "
        "then exit once every sample is acknowledged",
    )
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                     help="least severe log lines shown (default INFO; WARNING also hides replay progress)")
    run.add_argument("--log-format", choices=["text", "json"], default=None,
                     help="text (default, or $GRIDWATT_LOG_FORMAT) or json: one JSON object per line")
    check = sub.add_parser("check", help="check this node: GPUs and their fields, spool, collector, auth")
    check.add_argument("--config", required=True, help="agent config file (TOML)")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the collector")
    cap = sub.add_parser("capture", help="record every NVML call the NVML source makes, as test data "
                         "(JSON lines; see agent/sources/nvml/CAPTURE.md)")
    cap.add_argument("--seconds", type=float, required=True, help="how long to record (at most 3600)")
    cap.add_argument("-o", "--output", type=Path, required=True, help="capture file to write (.jsonl)")
    cap.add_argument("--interval", type=float, default=1.0, help="seconds between polls (default 1)")
    for name, text in (("install", "install as a systemd service (user, config, unit; enable --now)"),
                       ("uninstall", "stop and remove the service (keeps the spool unless --purge)")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--root", type=Path, default=Path("/"),
                        help="install into this folder instead of / (for images and tests)")
        sp.add_argument("--user", default="gridwatt", help="system user to run as (default gridwatt)")
        sp.add_argument("--dry-run", action="store_true", help="print what would be done, do nothing")
        if name == "install":
            sp.add_argument("--node", help="node name, set in agent.toml, new or existing "
                            "(default: none set, so the agent uses the hostname)")
            sp.add_argument("--collector", help="collector host:port, set in agent.toml, new or existing")
            sp.add_argument("--exec", dest="exec_path", type=Path,
                            help="gridwatt-agent executable for ExecStart (default: this one)")
            sp.add_argument("--no-start", action="store_true", help="enable but do not start it")
        else:
            sp.add_argument("--purge", action="store_true", help="also remove the spool and agent.toml")
    return p


def _install(args: argparse.Namespace) -> int:
    from gridwatt.agent.install import Installer, InstallError, InstallOptions

    opts = InstallOptions(
        root=args.root, user=args.user, dry_run=args.dry_run,
        node=getattr(args, "node", None), collector=getattr(args, "collector", None),
        exec_path=getattr(args, "exec_path", None), start=not getattr(args, "no_start", False),
        purge=getattr(args, "purge", False),
    )
    installer = Installer(opts)
    try:
        installer.install() if args.command == "install" else installer.uninstall()
    except (InstallError, OSError) as exc:
        print(f"gridwatt-agent {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    from gridwatt.agent.check import run_check

    try:
        config = load_config(args.config, AgentConfig)
    except ConfigError as exc:
        print(f"✗ {exc}", file=sys.stderr)
        return 1
    return 0 if run_check(config, args.config, timeout_s=args.timeout) else 1


def _capture(args: argparse.Namespace) -> int:
    from gridwatt.agent.sources.nvml.capture import run_capture_command

    return run_capture_command(args.seconds, args.interval, args.output)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "capture":
        logging.basicConfig(level="WARNING", stream=sys.stderr)
        return _capture(args)
    if args.command in ("install", "uninstall"):
        return _install(args)
    if args.command == "check":
        logging.basicConfig(level="ERROR", stream=sys.stderr)
        return _check(args)
    setup_logging(args.log_level, args.log_format)
    try:
        config = load_config(args.config, AgentConfig)
        if args.replay and config.source.kind != "sim":
            raise ConfigError(f"{args.config}: --replay needs source.kind = \"sim\"")
        from gridwatt.agent.runner import run_agent

        quiet = args.log_level in ("WARNING", "ERROR")
        result = asyncio.run(run_agent(config, replay=args.replay, progress=None if quiet else _progress))
    except (ConfigError, SourceError, TraceError, SpoolError) as exc:
        print(f"gridwatt-agent: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if result.rejections:
        print(f"gridwatt-agent: the collector rejected {result.ledger.rejected} samples; first reason: "
              f"{result.rejections[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
