"""``gridwatt-collector``: run the collector."""

from __future__ import annotations

import argparse
import asyncio
import sys

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
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument("--log-format", choices=["text", "json"], default=None,
                       help="text (default, or $GRIDWATT_LOG_FORMAT) or json: one JSON object per line")
    check = sub.add_parser("check-config", help="validate a config file and its data files, then exit")
    check.add_argument("--config", required=True)
    sub.add_parser(
        "hash-token",
        help="read a node token on stdin, print the sha256:<hex> form to keep in auth.tokens_file",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
        from gridwatt.collector.topology import Topology

        Topology(config)  # loads intensity and PUE files: their errors surface before serving
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
