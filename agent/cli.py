"""``gridwatt-agent``: run the node agent."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from gridwatt import __version__
from gridwatt.agent.config import AgentConfig
from gridwatt.agent.sources.base import SourceError
from gridwatt.agent.sources.sim.trace import TraceError
from gridwatt.agent.spool import SpoolError
from gridwatt.configfile import ConfigError, load_config


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
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        config = load_config(args.config, AgentConfig)
        if args.replay and config.source.kind != "sim":
            raise ConfigError(f"{args.config}: --replay needs source.kind = \"sim\"")
        from gridwatt.agent.runner import run_agent

        result = asyncio.run(run_agent(config, replay=args.replay))
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
