"""The one Celery task: thin, it hands the job id to this process's runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.celery_app import TASK

if TYPE_CHECKING:
    from celery import Celery

    from workers.runtime import WorkerRuntime


def register(app: Celery, runtime: WorkerRuntime) -> None:
    @app.task(name=TASK, acks_late=True, ignore_result=True)
    def run_job(job_ids: str | list[str]) -> str | list[str]:
        """Run one job, or the jobs submitted together (one message, shared batches)."""
        if isinstance(job_ids, str):
            job_ids = [job_ids]
        if (not isinstance(job_ids, list) or not job_ids or len(job_ids) > 1024
                or not all(isinstance(j, str) and 0 < len(j) <= 200 for j in job_ids)):
            return "refused (malformed job ids)"
        return runtime.run_jobs(list(dict.fromkeys(job_ids)))
