"""``gridwatt``: the command line for people: per-job reports, and the demo (gridwatt/report.py formats)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from gridwatt import __version__
from gridwatt.report import (
    DEFAULT_TIMEOUT_S,
    CliError,
    fetch_json,
    format_alerts,
    format_job,
    format_jobs,
    format_racks,
    format_usage,
    read_token,
    set_credentials,
)
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


def write_report(args: argparse.Namespace) -> None:
    """gridwatt report: fetch /v1/report and write it as CSV, JSON or PDF."""
    if args.format == "pdf" and not args.output:
        raise CliError("--format pdf needs --output FILE.pdf")
    if args.format == "pdf":
        try:
            import reportlab  # noqa: F401
        except ImportError:
            raise CliError("PDF reports need reportlab: pip install 'gridwatt[pdf]' "
                           "(--format csv and json need nothing more)") from None
    body = fetch_json(args.collector, "/v1/report" + _query(since=args.since, until=args.until, by=args.by,
                                                           tz=args.tz), timeout_s=max(args.timeout, 120.0))
    from gridwatt.report_render import to_csv, to_pdf

    if args.format == "pdf":
        try:
            to_pdf(body, Path(args.output))
        except OSError as exc:
            raise CliError(f"cannot write {args.output}: {exc.strerror}") from None
        print(f"wrote {args.output}", file=sys.stderr)
        return
    text = json.dumps(body, indent=2) + "\n" if args.format == "json" else to_csv(body)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write {args.output}: {exc.strerror}") from None
    else:
        sys.stdout.write(text)


def _query(**params: Any) -> str:
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return f"?{query}" if query else ""


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
    p.add_argument("--token-file", default=None if top else argparse.SUPPRESS,
                   help="file holding your read token (default $GRIDWATT_TOKEN_FILE, or the token in "
                   "$GRIDWATT_TOKEN)")
    p.add_argument("--ca-file", default=os.environ.get("GRIDWATT_CA_FILE") if top else argparse.SUPPRESS,
                   help="CA of an https:// collector (default $GRIDWATT_CA_FILE; else the system's)")


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
    jobs = sub.add_parser("jobs", help="your jobs, newest first (operators: everyone's)")
    jobs.add_argument("--user", help="only this user's jobs")
    jobs.add_argument("--account", help="only this account's jobs")
    jobs.add_argument("--since", help="ISO 8601 UTC start")
    jobs.add_argument("--until", help="ISO 8601 UTC end")
    jobs.add_argument("--limit", type=int, default=50, help="jobs per page (1-1000, default 50)")
    jobs.add_argument("--cursor", help="the next page, as printed at the end of the previous one")
    jobs.add_argument("--json", action="store_true", help="print one JSON object")
    usage = sub.add_parser("usage", help="GPU-hours, energy and CO2e per user, account, rack or zone")
    usage.add_argument("--group-by", choices=["user", "account", "rack", "zone"], default="account",
                       help="one row per user, account, rack or zone (default account)")
    usage.add_argument("--since", help="ISO 8601 UTC start")
    usage.add_argument("--until", help="ISO 8601 UTC end")
    usage.add_argument("--json", action="store_true", help="print one JSON object")
    report = sub.add_parser("report", help="sustainability report: Scope 2 location- and market-based, SCI")
    report.add_argument("--since", required=True, help="ISO 8601 UTC start")
    report.add_argument("--until", required=True, help="ISO 8601 UTC end")
    report.add_argument("--by", choices=["account", "user", "rack"], default="account",
                        help="one group per account, user or rack (default account)")
    report.add_argument("--format", choices=["csv", "json", "pdf"], default="csv",
                        help="csv (default), json, or pdf (needs --output and gridwatt[pdf])")
    report.add_argument("--tz", help="IANA time zone of the report's days (default: the collector's)")
    report.add_argument("--output", "-o", help="file to write (default stdout; needed for pdf)")
    alerts = sub.add_parser("alerts", help="firing, pending and recent idle-GPU alerts")
    alerts.add_argument("--json", action="store_true", help="print one JSON object")
    for sp in (job, racks, jobs, usage, report, alerts):
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
        set_credentials(read_token(args.token_file), args.ca_file)
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
        elif args.command == "jobs":
            body = fetch_json(args.collector, "/v1/jobs" + _query(
                user=args.user, account=args.account, since=args.since, until=args.until, limit=args.limit,
                cursor=args.cursor), args.timeout)
            print(json.dumps(body, indent=2) if args.json else format_jobs(body))
        elif args.command == "usage":
            body = fetch_json(args.collector, "/v1/usage" + _query(
                group_by=args.group_by, since=args.since, until=args.until), args.timeout)
            print(json.dumps(body, indent=2) if args.json else format_usage(body))
        elif args.command == "report":
            write_report(args)
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
