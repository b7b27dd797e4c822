"""The one Celery task: thin, it hands the job id to this process's runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.celery_app import TASK

if TYPE_CHECKING:
    from celery import Celery

    from workers.runtime import WorkerRuntime


def register(app: Celery, runtime: WorkerRuntime) -> None:
    @app.task(name=TASK, acks_late=True, ignore_result=True)
    def run_job(job_id: str) -> str:
        if not isinstance(job_id, str) or len(job_id) > 200:
            return "refused (malformed job id)"
        return runtime.run_job(job_id)
