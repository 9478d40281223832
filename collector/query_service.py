"""The gridwatt.v1.Query gRPC service and the HTTP API (GET /v1/jobs/{job_id}, /healthz, /metrics)."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from aiohttp import web

from gridwatt.collector.alerts.monitor import AlertMonitor
from gridwatt.collector.jobs import JobNotFound, job_report
from gridwatt.collector.live_metrics import exposition
from gridwatt.collector.metrics import CONTENT_TYPE, CollectorMetrics
from gridwatt.collector.racks import rack_totals
from gridwatt.collector.store import InfluxStore, QueryError
from gridwatt.collector.web.pages import Pages
from gridwatt.timeutil import parse_time_ns
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc


class QueryService(pb_grpc.QueryServicer):
    def __init__(self, store: InfluxStore) -> None:
        self.store = store

    async def GetJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.JobReport:
        try:
            report = await job_report(self.store, request.job_id)
        except JobNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except QueryError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return report.to_proto()


def http_app(
    store: InfluxStore,
    metrics: CollectorMetrics | None = None,
    monitor: AlertMonitor | None = None,
    overloaded: Callable[[], bool] | None = None,
) -> web.Application:
    """The collector's HTTP API: /v1/jobs/{job_id}, /v1/racks, /v1/alerts, /healthz, /metrics.

    ``/healthz`` answers 200 while InfluxDB accepts writes and 503 (with the reason) while it
    does not; ``/metrics`` is the Prometheus text exposition of ``metrics``.
    """

    async def get_alerts(request: web.Request) -> web.Response:
        alerts = monitor.recent() if monitor is not None else []
        return web.json_response({"alerts": alerts, "rules": len(monitor.config.rules) if monitor else 0})

    async def get_job(request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        try:
            report = await job_report(store, job_id)
        except JobNotFound as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except QueryError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response(report.to_json())

    async def healthz(request: web.Request) -> web.Response:
        if store.serving and overloaded is not None and overloaded():
            return web.json_response(
                {"status": "unavailable", "reason": "collector overloaded (max_in_flight_batches)"},
                status=503,
            )
        if store.serving:
            return web.json_response({"status": "ok"})
        return web.json_response(
            {"status": "unavailable", "reason": f"InfluxDB: {store.health_reason}",
             "retry_after_s": round(store.retry_after_s(), 3)},
            status=503,
        )

    async def metrics_text(request: web.Request) -> web.Response:
        if metrics is None:
            return web.Response(body=b"", headers={"Content-Type": CONTENT_TYPE})
        body, content_type = exposition(metrics, request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def get_racks(request: web.Request) -> web.Response:
        try:
            since = parse_time_ns(request.query["since"]) if "since" in request.query else None
            until = parse_time_ns(request.query["until"]) if "until" in request.query else None
        except ValueError as exc:
            return web.json_response({"error": f"bad since/until: {exc}"}, status=400)
        try:
            racks = await rack_totals(store, since, until)
        except QueryError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response({"racks": racks})

    app = web.Application()
    app.router.add_get("/v1/racks", get_racks)
    app.router.add_get("/v1/jobs/{job_id}", get_job)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/alerts", get_alerts)
    app.router.add_get("/metrics", metrics_text)
    Pages(store, monitor).add_routes(app)  # the web page at /ui/
    return app
