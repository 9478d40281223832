"""Reports from the collector's HTTP API for people: fetching the JSON and formatting it.

Used by the ``gridwatt`` command (gridwatt/cli.py) and the demo (gridwatt/demo.py).
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import urllib.error
import urllib.request
from typing import Any


class CliError(Exception):
    """A user-facing error; printed without a traceback."""


#: Longer than the collector's own InfluxDB timeout (10 s), so that when InfluxDB hangs the
#: collector's answer naming InfluxDB arrives before the CLI gives up on the collector.
DEFAULT_TIMEOUT_S = 30.0


#: Read credentials sent with every request (``set_credentials``): the bearer token and the TLS context.
_CREDENTIALS: dict[str, Any] = {"token": None, "ssl": None}


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


def set_credentials(token: str | None, ca_file: str | None = None) -> None:
    """Send ``Authorization: Bearer token`` with every request; trust ``ca_file`` for https://."""
    _CREDENTIALS["token"] = token
    _CREDENTIALS["ssl"] = None
    if ca_file:
        try:
            _CREDENTIALS["ssl"] = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise CliError(f"--ca-file {ca_file}: {exc}") from None


def fetch_json(base_url: str, path: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """GET a collector API path; raise CliError with the collector's message on failure."""
    url = base_url.rstrip("/") + path
    token = _CREDENTIALS["token"]
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=_CREDENTIALS["ssl"]) as resp:
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
