"""A local S3-compatible server for tests: moto's standalone server on 127.0.0.1.

Under CI=true a missing moto fails the test run (``make test`` installs it with the dev
extras); elsewhere the tests that need it skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import IN_CI

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "convoy-test", "AWS_SECRET_ACCESS_KEY": "convoy-test",
               "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    endpoint: str
    bucket: str

    def env(self, prefix: str) -> dict[str, str]:
        """What a service process needs to keep its blobs under s3://bucket/prefix."""
        return {"CONVOY_BLOBS": f"s3://{self.bucket}/{prefix}",
                "CONVOY_S3_ENDPOINT_URL": self.endpoint, **CREDENTIALS}

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="convoy-test", aws_secret_access_key="convoy-test")

    def names(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


def start_s3() -> Iterator[S3Server]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        if IN_CI:
            pytest.fail("moto[server] is required under CI=true (pip install '.[dev]')")
        pytest.skip("moto[server] is not installed")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = S3Server(f"http://{host}:{port}", "convoy-blobs")
    s3.client().create_bucket(Bucket=s3.bucket)
    try:
        yield s3
    finally:
        server.stop()
