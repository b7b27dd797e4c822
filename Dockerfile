# Two images from one file: `api` (the API, SDK and CLI; no torch) and `worker` (adds torch,
# diffusers and the built-in weights' runtime). docker-compose.yml builds each by target.
FROM python:3.11-slim AS api
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
COPY models ./models
COPY bench ./bench
RUN pip install --no-cache-dir .
EXPOSE 8000
CMD ["convoy", "serve", "--host", "0.0.0.0", "--no-worker"]

FROM api AS worker
RUN pip install --no-cache-dir ".[worker]"
CMD ["convoy", "worker"]
