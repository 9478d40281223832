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
from typing import Any

from gridwatt import __version__
from gridwatt.timeutil import parse_time_ns

DEFAULT_COLLECTOR_URL = "http://127.0.0.1:8080"


class CliError(Exception):
    """A user-facing error; printed without a traceback."""


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
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
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
            f"Job {r['job_id']}" + (f" ({r['alias']})" if r.get("alias") else "")
            + "".join(f", {k} {r[k]}" for k in ("user", "account") if r.get(k)),
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
