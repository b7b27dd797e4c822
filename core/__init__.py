"""What the API and the workers share: settings, the error taxonomy, the job contract and
the typed job record, image decoding limits, the job store, the blob store, the broker (the
Celery app and its transports) and the records kept beside the jobs (queue order and
estimates, metering, the webhook outbox, fine-tuned models). ``service`` (the API) and
``workers`` (the runtime) both import ``core``; the API imports nothing from ``workers``."""
