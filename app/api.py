"""REST routes served beside the Gradio app: ``GET /api/health`` and ``GET /api/info``.

Both are ``async`` and touch nothing slow (no torch, no database writes): they run on the event
loop itself, not in the thread pool that Gradio's handlers share, so they answer at once even
while a run trains and every worker thread is busy. They carry no user data (no paths, no
records), so they stay open when the app asks for a login: a Space's or a monitor's health
check needs no password.
"""

from __future__ import annotations

import time
from importlib import metadata
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.concurrency import run_in_threadpool

STARTED = time.time()


def version() -> str:
    try:
        return metadata.version("modelforge")
    except metadata.PackageNotFoundError:
        return "0.0.0+local"


def health_payload(jobs: Any) -> dict:
    """Liveness plus what the device is doing (run ids only)."""
    return {"status": "ok", "version": version(), "uptime_s": round(time.time() - STARTED, 1),
            "training": jobs.current, "queued": jobs.waiting()}


_INFO: dict | None = None


def info_payload() -> dict:
    """Providers, strategies and tasks with their availability here (computed once per process)."""
    global _INFO  # a cache of static facts (installed packages), not mutable app state
    if _INFO is None:
        from core.catalog import describe

        import gradio

        _INFO = {"name": "ModelForge", "version": version(), "gradio": gradio.__version__, **describe()}
    return _INFO


def build_router(jobs: Any) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["modelforge"])

    @router.get("/health")
    async def health() -> dict:
        return health_payload(jobs)

    @router.get("/info")
    async def info() -> dict:
        # The first call asks every strategy whether it works here, which may import trl: do it
        # in a worker thread so the event loop (and /api/health) never waits for it.
        return info_payload() if _INFO is not None else await run_in_threadpool(info_payload)

    return router


def build_api(jobs: Any) -> FastAPI:
    """A FastAPI app holding the REST routes; app/ui.py mounts the Gradio app beside them."""
    api = FastAPI(title="ModelForge", version=version(), docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json")
    api.include_router(build_router(jobs))
    return api
