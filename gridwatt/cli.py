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
from gridwatt.report import DEFAULT_TIMEOUT_S, CliError, fetch_json, format_alerts, format_job, format_racks
from gridwatt.timeutil import parse_time_ns

DEFAULT_COLLECTOR_URL = "http://127.0.0.1:8080"


def collector_url(value: str) -> str:
    """``host:port`` or a URL; a missing scheme means http://."""
    value = value.strip()
    if "://" not in value:
        value = "http://" + value
    if not value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{value!r}: the collector URL must be http:// or https://")
    return value


def _positive_hours(value: str) -> float:
    try:
        hours = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of hours") from None
    if not 0 < hours <= 24 * 366:
        raise argparse.ArgumentTypeError(f"{value}: give more than 0 and at most 8784 hours")
    return hours


def _collector_options(p: argparse.ArgumentParser, top: bool) -> None:
    """--collector and --timeout, accepted before and after the subcommand."""
    default = os.environ.get("GRIDWATT_COLLECTOR_URL", DEFAULT_COLLECTOR_URL)
    p.add_argument(
        "--collector", type=collector_url,
        default=collector_url(default) if top else argparse.SUPPRESS,
        help="collector HTTP API, URL or host:port "
        f"(default $GRIDWATT_COLLECTOR_URL or {DEFAULT_COLLECTOR_URL})",
    )
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S if top else argparse.SUPPRESS,
                   help=f"seconds to wait for the collector (default {DEFAULT_TIMEOUT_S:g})")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gridwatt", description="energy and carbon of GPU jobs")
    p.add_argument("--version", action="version", version=f"gridwatt {__version__}")
    _collector_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True)
    job = sub.add_parser("job", help="energy and emissions of one job")
    job.add_argument("job_id", help="the job's id as the agents report it (Slurm job id, k8s-pod/<uid>, "
                     "...), or as Slurm users write it: 1234_7 (array task), 1234+1 (het component), "
                     "1234.0 (a step: its job's report)")
    job.add_argument("--json", action="store_true", help="print one JSON object")
    racks = sub.add_parser("racks", help="energy and emissions per rack")
    racks.add_argument("--since", help="ISO 8601 UTC start (default: all data)")
    racks.add_argument("--until", help="ISO 8601 UTC end")
    racks.add_argument("--json", action="store_true", help="print one JSON object")
    alerts = sub.add_parser("alerts", help="firing, pending and recent idle-GPU alerts")
    alerts.add_argument("--json", action="store_true", help="print one JSON object")
    for sp in (job, racks, alerts):
        _collector_options(sp, top=False)
    demo = sub.add_parser("demo", help="run the demo: InfluxDB, collector, simulated agents, a report")
    demo.add_argument("--hours", type=_positive_hours, default=24.0,
                      help="replayed hours of the training job (default 24)")
    demo.add_argument("--keep", action="store_true", help="keep the demo's folder (configs, data)")
    demo.add_argument("--serve", action="store_true", help="keep InfluxDB and the collector up afterwards")
    return p


def _time(value: str, option: str) -> int:
    try:
        return parse_time_ns(value)
    except ValueError:
        raise CliError(f"{option} {value!r}: not an ISO 8601 time (e.g. 2022-03-07T00:00:00Z)") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "job":
            report = fetch_json(args.collector, "/v1/jobs/" + urllib.parse.quote(args.job_id, safe=""),
                                args.timeout)
            print(json.dumps(report, indent=2) if args.json else format_job(report))
        elif args.command == "racks":
            if args.since and args.until and _time(args.since, "--since") >= _time(args.until, "--until"):
                raise CliError(f"--since {args.since} is not before --until {args.until}")
            bounds = {"since": args.since, "until": args.until}
            query = urllib.parse.urlencode({k: v for k, v in bounds.items() if v})
            body = fetch_json(args.collector, "/v1/racks" + (f"?{query}" if query else ""), args.timeout)
            print(json.dumps(body, indent=2) if args.json else format_racks(body))
        elif args.command == "alerts":
            body = fetch_json(args.collector, "/v1/alerts", args.timeout)
            print(json.dumps(body, indent=2) if args.json else format_alerts(body))
        elif args.command == "demo":
            from gridwatt.demo import DemoError, run_demo

            try:
                return run_demo(hours=args.hours, keep=args.keep, serve=args.serve)
            except (DemoError, RuntimeError) as exc:
                raise CliError(f"demo: {exc}") from None
        sys.stdout.flush()  # a closed pipe shows here, inside main, not at interpreter exit
    except CliError as exc:
        print(f"gridwatt: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader (e.g. `| head`) went away: stop quietly, like other Unix tools
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
