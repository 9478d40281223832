"""``gridwatt``: the command line for people: per-job reports, and the demo (gridwatt/report.py formats)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

from gridwatt import __version__
from gridwatt.report import CliError, fetch_json, format_alerts, format_job, format_racks

DEFAULT_COLLECTOR_URL = "http://127.0.0.1:8080"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gridwatt", description="energy and carbon of GPU jobs")
    p.add_argument("--version", action="version", version=f"gridwatt {__version__}")
    p.add_argument(
        "--collector",
        default=os.environ.get("GRIDWATT_COLLECTOR_URL", DEFAULT_COLLECTOR_URL),
        help="collector HTTP API (default $GRIDWATT_COLLECTOR_URL or %(default)s)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    job = sub.add_parser("job", help="energy and emissions of one job")
    job.add_argument("job_id")
    job.add_argument("--json", action="store_true", help="print one JSON object")
    racks = sub.add_parser("racks", help="energy and emissions per rack")
    racks.add_argument("--since", help="ISO 8601 UTC start (default: all data)")
    racks.add_argument("--until", help="ISO 8601 UTC end")
    racks.add_argument("--json", action="store_true", help="print one JSON object")
    alerts = sub.add_parser("alerts", help="firing, pending and recent idle-GPU alerts")
    alerts.add_argument("--json", action="store_true", help="print one JSON object")
    demo = sub.add_parser("demo", help="run the demo: InfluxDB, collector, simulated agents, a report")
    demo.add_argument("--hours", type=float, default=24.0, help="replayed hours of the training job")
    demo.add_argument("--keep", action="store_true", help="keep the demo's folder (configs, data)")
    demo.add_argument("--serve", action="store_true", help="keep InfluxDB and the collector up afterwards")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "job":
            report = fetch_json(args.collector, "/v1/jobs/" + urllib.parse.quote(args.job_id, safe=""))
            print(json.dumps(report, indent=2) if args.json else format_job(report))
        elif args.command == "racks":
            bounds = {"since": args.since, "until": args.until}
            query = urllib.parse.urlencode({k: v for k, v in bounds.items() if v})
            body = fetch_json(args.collector, "/v1/racks" + (f"?{query}" if query else ""))
            print(json.dumps(body, indent=2) if args.json else format_racks(body))
        elif args.command == "alerts":
            body = fetch_json(args.collector, "/v1/alerts")
            print(json.dumps(body, indent=2) if args.json else format_alerts(body))
        elif args.command == "demo":
            from gridwatt.demo import run_demo

            return run_demo(hours=args.hours, keep=args.keep, serve=args.serve)
    except CliError as exc:
        print(f"gridwatt: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
