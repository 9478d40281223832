"""``gridwatt``: the command line for people: per-job reports, and the demo."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from gridwatt import __version__
from gridwatt.timeutil import parse_time_ns

DEFAULT_COLLECTOR_URL = "http://127.0.0.1:8080"


class CliError(Exception):
    """A user-facing error; printed without a traceback."""


#: Read credentials for every request (set by main from --token-file / $GRIDWATT_TOKEN[_FILE]).
_AUTH: dict[str, Any] = {"token": None, "ssl": None}


def read_token(token_file: str | None) -> str | None:
    """The read token: from ``token_file`` (or $GRIDWATT_TOKEN_FILE), else $GRIDWATT_TOKEN; None if none."""
    path = token_file or os.environ.get("GRIDWATT_TOKEN_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                token = fh.read(4096).strip()
        except OSError as exc:
            raise CliError(f"cannot read the token file {path}: {exc.strerror}") from None
        if not token:
            raise CliError(f"the token file {path} is empty")
        return token
    return os.environ.get("GRIDWATT_TOKEN") or None


#: Longer than the collector's own InfluxDB timeout (10 s), so that when InfluxDB hangs the
#: collector's answer naming InfluxDB arrives before the CLI gives up on the collector.
DEFAULT_TIMEOUT_S = 30.0


def collector_url(value: str) -> str:
    """``host:port`` or a URL; a missing scheme means http://."""
    value = value.strip()
    if "://" not in value:
        value = "http://" + value
    if not value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{value!r}: the collector URL must be http:// or https://")
    return value


def fetch_json(base_url: str, path: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """GET a collector API path; raise CliError with the collector's message on failure."""
    url = base_url.rstrip("/") + path
    headers = {"Authorization": f"Bearer {_AUTH['token']}"} if _AUTH["token"] else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s,
                                    context=_AUTH["ssl"]) as resp:
            data: dict[str, Any] = json.load(resp)
            return data
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc).get("error", exc.reason)
        except (ValueError, AttributeError):
            message = exc.reason
        raise CliError(f"{message} (HTTP {exc.code} from {url})") from None
    except http.client.HTTPException as exc:
        raise CliError(f"{base_url} did not answer HTTP ({type(exc).__name__}): is it the collector's gRPC "
                       "port? The HTTP API is at [server] http_listen (default port 8080)") from None
    except TimeoutError:
        raise CliError(f"the collector at {base_url} did not answer within {timeout_s:g} s "
                       "(--timeout)") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise CliError(f"the collector at {base_url} did not answer within {timeout_s:g} s "
                           "(--timeout)") from None
        raise CliError(f"cannot reach the collector at {base_url}: {reason} "
                       "(set --collector or GRIDWATT_COLLECTOR_URL)") from None


def format_job(r: dict[str, Any]) -> str:
    """A job report for people."""
    hours = (r["end_ns"] - r["start_ns"]) / 3.6e12
    nodes = r["nodes"]
    shown_nodes = ", ".join(nodes[:8]) + (f", … (+{len(nodes) - 8})" if len(nodes) > 8 else "")
    return "\n".join(
        [
            f"Job {r['job_id']}",
            f"  period          {r['start']} → {r['end']} ({hours:.1f} h)",
            f"  nodes           {len(nodes)} ({shown_nodes})",
            f"  GPUs            {r['gpu_count']}",
            f"  GPU-hours       {r['gpu_hours']:.2f}",
            f"  mean util       {r['mean_util_pct']:.1f} %   idle share {r['idle_share'] * 100:.1f} %",
            f"  IT energy       {r['it_energy_kwh']:.3f} kWh",
            f"  facility energy {r['facility_energy_kwh']:.3f} kWh   (mean PUE {r['mean_pue']:.3f})",
            f"  emissions       {r['co2e_kg']:.3f} kg CO2e   (mean intensity "
            f"{r['mean_intensity_g_per_kwh']:.1f} gCO2e/kWh, {r['emission_factor'] or 'unknown'} factors)",
            f"  idle energy     {r['idle_energy_kwh']:.3f} kWh",
            f"  estimated       {r.get('estimated_share', 0.0) * 100:.1f} % of the emissions rest on "
            "estimated or held grid intensity",
        ]
    )


def format_racks(body: dict[str, Any]) -> str:
    """A table of per-rack totals."""
    racks = body.get("racks", [])
    if not racks:
        return "no rack data in that range"
    head = (f"{'rack':<14}{'zone':<8}{'IT kWh':>12}{'facility kWh':>14}{'kg CO2e':>12}{'PUE':>7}"
            f"{'g/kWh':>8}{'GPU-h':>10}{'util %':>8}{'idle kWh':>10}{'est %':>7}")
    rows = [head]
    for r in racks:
        rows.append(
            f"{r['rack']:<14}{r['zone']:<8}{r['it_energy_kwh']:>12.2f}{r['facility_energy_kwh']:>14.2f}"
            f"{r['co2e_kg']:>12.2f}{r['mean_pue']:>7.3f}{r['mean_intensity_g_per_kwh']:>8.1f}"
            f"{r['gpu_hours']:>10.1f}{r['mean_util_pct']:>8.1f}{r['idle_energy_kwh']:>10.2f}"
            f"{r.get('estimated_share', 0.0) * 100:>7.1f}"
        )
    return "\n".join(rows)


def format_jobs(body: dict[str, Any]) -> str:
    """A page of the job listing for people."""
    jobs = body.get("jobs", [])
    if not jobs:
        return "no jobs you may see in that range"
    rows = [f"{'job':<24}{'user':<12}{'account':<12}{'end':<22}{'GPU-h':>9}{'IT kWh':>11}{'kg CO2e':>10}"
            f"{'util %':>8}{'idle %':>8}"]
    for j in jobs:
        rows.append(f"{j['job_id'][:23]:<24}{j['user'][:11] or '-':<12}{j['account'][:11] or '-':<12}"
                    f"{j['end']:<22}{j['gpu_hours']:>9.2f}{j['it_energy_kwh']:>11.3f}{j['co2e_kg']:>10.3f}"
                    f"{j['mean_util_pct']:>8.1f}{j['idle_share'] * 100:>8.1f}")
    if body.get("next_cursor"):
        rows.append(f"more: --cursor {body['next_cursor']}")
    return "\n".join(rows)


def format_usage(body: dict[str, Any]) -> str:
    """Usage per group for people."""
    key = body["group_by"]
    groups = body.get("groups", [])
    if not groups:
        return "no usage you may see in that range"
    rows = [f"{key:<16}{'jobs':>6}{'GPU-h':>10}{'IT kWh':>12}{'fac. kWh':>12}{'kg CO2e':>11}{'idle kWh':>10}"
            f"{'idle %':>8}{'util %':>8}"]
    for g in groups:
        rows.append(f"{str(g[key])[:15] or '-':<16}{g['jobs']:>6}{g['gpu_hours']:>10.2f}"
                    f"{g['it_energy_kwh']:>12.3f}"
                    f"{g['facility_energy_kwh']:>12.3f}{g['co2e_kg']:>11.3f}{g['idle_energy_kwh']:>10.3f}"
                    f"{g['idle_share'] * 100:>8.1f}{g['mean_util_pct']:>8.1f}")
    return "\n".join(rows)


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


def format_alerts(body: dict[str, Any]) -> str:
    """Firing, pending and recent alerts for people."""
    alerts = body.get("alerts", [])
    if not alerts:
        rules = body.get("rules", 0)
        return "no alerts" + ("" if rules else " (the collector has no alert rules configured)")
    lines = []
    for a in alerts:
        when = a.get("resolved_at") or a.get("fired_at") or a.get("started_at")
        scope = a["scope"] if a["scope_kind"] == a["scope"] else f"{a['scope_kind']} {a['scope']}"
        lines.append(f"{a['state'].upper():9} {a['rule']}  {scope}  since {a['started_at']}  ({when})")
        lines.append(
            f"          {len(a.get('gpus', []))} GPUs on {len(a.get('nodes', []))} nodes at "
            f"{a['mean_util_pct']:.1f} % util for {a['duration_s'] / 60:.0f} min: wasted "
            f"{a['wasted_energy_kwh']:.2f} kWh, {a['wasted_co2e_kg']:.2f} kg CO2e "
            f"({a['waste_rate_kwh_per_h']:.2f} kWh/h, {a['waste_rate_kg_per_h']:.2f} kg/h)"
        )
    return "\n".join(lines)


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
    job.add_argument("job_id", help="the job's id as the agents report it (Slurm job id, k8s-pod/<uid>, ...)")
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
        _AUTH["token"] = read_token(args.token_file)
        if args.ca_file:
            import ssl

            try:
                _AUTH["ssl"] = ssl.create_default_context(cafile=args.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise CliError(f"--ca-file {args.ca_file}: {exc}") from None
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
