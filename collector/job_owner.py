"""Who ran a job: its user and account as stored on its ``job`` points (for read scoping)."""

from __future__ import annotations

from gridwatt.collector import queries
from gridwatt.collector.store import InfluxStore, series_rows


async def job_owner(store: InfluxStore, job_id: str) -> tuple[str, str]:
    """(user, account) of the job's latest ``job`` point that names them; "" where unknown."""
    user_res, account_res = await store.query(queries.job_owner(store.measurement, job_id))
    user_rows = series_rows(user_res)
    account_rows = series_rows(account_res)
    user = str(user_rows[0][1].get("v") or "") if user_rows else ""
    account = str(account_rows[0][1].get("v") or "") if account_rows else ""
    return user, account
