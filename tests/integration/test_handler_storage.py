"""`storage` copying real downloads to a folder and to a real S3 server (moto) on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socketserver
import subprocess
import sys
import threading
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from handlers import PermanentError
from handlers._http import DeliveryFailed
from handlers.storage import StorageHandler
from receiver.background import BackgroundServer
from receiver.events import Job, JobError, JobStatus, make_event
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.anyio
SAMPLE = Path(__file__).resolve().parents[2] / "receiver" / "emulators" / "sample.mp4"
MIB = 1 << 20
BLOCK = random.Random(7).randbytes(MIB)


def generated(total: int) -> Iterator[bytes]:
    """Deterministic content, one MiB at a time, each chunk numbered so reordering would show."""
    sent, index = 0, 0
    while sent < total:
        chunk = (index.to_bytes(8, "big") + BLOCK[8:])[: total - sent]
        yield chunk
        sent, index = sent + len(chunk), index + 1


def generated_sha256(total: int) -> str:
    digest = hashlib.sha256()
    for chunk in generated(total):
        digest.update(chunk)
    return digest.hexdigest()


async def stream(total: int) -> AsyncIterator[bytes]:
    for chunk in generated(total):
        yield chunk


class HalfOrigin(socketserver.BaseRequestHandler):
    """Promises 20 MiB and sends half; then `/cut.mp4` hangs up (a connection dropped mid-file) and
    `/stall.mp4` goes quiet until the test ends (a copy the dispatcher's timeout cancels)."""

    release = threading.Event()

    def handle(self) -> None:
        request = self.request.recv(65536)
        size = 20 * MIB
        self.request.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: %d\r\n\r\n" % size
        )
        try:
            for chunk in generated(size // 2):
                self.request.sendall(chunk)
        except ConnectionError:
            return  # the client gave up first: that is what some tests want
        if b" /stall.mp4 " in request:
            self.release.wait(timeout=30)


@pytest.fixture(scope="module")
def half_origin() -> Iterator[str]:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), HalfOrigin) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}"
        HalfOrigin.release.set()
        server.shutdown()
        thread.join()


def origin_app() -> Starlette:
    """A CDN stand-in that streams, so neither side ever holds a whole file."""

    async def sample(request: Request) -> Response:
        return FileResponse(SAMPLE, media_type="video/mp4")

    async def chunked(request: Request) -> Response:
        return StreamingResponse(stream(request.path_params["size"]), media_type="video/mp4")

    async def sized(request: Request) -> Response:
        size = request.path_params["size"]
        return StreamingResponse(stream(size), media_type="video/mp4", headers={"content-length": str(size)})

    async def blob(request: Request) -> Response:
        return Response(b"webm bytes", media_type="video/webm")

    async def gone(request: Request) -> Response:
        return PlainTextResponse("expired", status_code=404)

    return Starlette(
        routes=[
            Route("/v/sample.mp4", sample),
            Route("/gen/{size:int}/clip.mp4", chunked),
            Route("/sized/{size:int}/clip.mp4", sized),
            Route("/blob", blob),
            Route("/gone.mp4", gone),
        ]
    )


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    with BackgroundServer(origin_app()) as server:
        yield server.url


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 in a child process: its copy of the 100 MB stays out of this process's memory."""
    script = (
        "import logging, sys\n"
        "from moto.server import ThreadedMotoServer\n"
        "logging.getLogger('werkzeug').setLevel(logging.ERROR)\n"
        "server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)\n"
        "server.start()\n"
        "print(server.get_host_and_port()[1], flush=True)\n"
        "sys.stdin.read()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        assert child.stdin is not None
        port = child.stdout.readline().strip()
        assert port.isdigit(), "moto server did not start"
        yield f"http://127.0.0.1:{port}"
        child.stdin.close()  # the child's read returns and it exits; leaving the block waits for it


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def bucket(moto_endpoint: str, aws_env: None) -> tuple[Any, str]:
    """A fresh bucket and an independent (boto3) client to look into it."""
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    name = f"videos-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return s3, name


NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def storage(target: str, **options: Any) -> StorageHandler:
    """The origins here listen on loopback, which the handler refuses unless told to allow it."""
    return StorageHandler(target, allow_private_hosts=True, **options)


def an_event(
    *urls: str, status: JobStatus = JobStatus.SUCCEEDED, job_id: str = "job_store1"
) -> dict[str, Any]:
    job = Job(
        id=job_id,
        provider="runbase",
        status=status,
        request={"prompt": "a lighthouse in a storm"},
        output_urls=list(urls),
        error=None if status is JobStatus.SUCCEEDED else JobError("failed", "model error"),
        created_at=NOW,
    )
    return make_event(job, "evt_" + job_id, now=NOW)


def keys(s3: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


async def test_copies_outputs_to_a_folder(origin: str, tmp_path: Path) -> None:
    folder = tmp_path / "videos"
    handler = storage(f"file://{folder}")
    event = an_event(f"{origin}/v/sample.mp4", f"{origin}/gen/{3 * MIB + 5}/clip.mp4", f"{origin}/blob")
    try:
        report = await handler.handle(event)
    finally:
        await handler.aclose()
    assert report == {
        "stored_urls": [(folder / f"job_store1/{name}").as_uri() for name in ("0.mp4", "1.mp4", "2.webm")],
        "event_url": (folder / "job_store1.json").as_uri(),
    }
    assert (folder / "job_store1/0.mp4").read_bytes() == SAMPLE.read_bytes()
    stored = (folder / "job_store1/1.mp4").read_bytes()
    assert hashlib.sha256(stored).hexdigest() == generated_sha256(3 * MIB + 5)
    assert (folder / "job_store1/2.webm").read_bytes() == b"webm bytes"
    assert json.loads((folder / "job_store1.json").read_text()) == event
    assert files(folder) == ["job_store1.json", "job_store1/0.mp4", "job_store1/1.mp4", "job_store1/2.webm"]


async def test_copies_outputs_to_s3(origin: str, bucket: tuple[Any, str], moto_endpoint: str) -> None:
    s3, name = bucket
    size = 11 * MIB + 3  # more than one part: exercises the multipart upload
    handler = storage(f"s3://{name}/kling/", endpoint_url=moto_endpoint)
    event = an_event(f"{origin}/v/sample.mp4", f"{origin}/gen/{size}/clip.mp4")
    try:
        report = await handler.handle(event)
    finally:
        await handler.aclose()
    assert report == {
        "stored_urls": [f"s3://{name}/kling/job_store1/0.mp4", f"s3://{name}/kling/job_store1/1.mp4"],
        "event_url": f"s3://{name}/kling/job_store1.json",
    }
    first = s3.get_object(Bucket=name, Key="kling/job_store1/0.mp4")
    assert first["Body"].read() == SAMPLE.read_bytes()
    assert first["ContentType"] == "video/mp4"
    second = s3.get_object(Bucket=name, Key="kling/job_store1/1.mp4")["Body"].read()
    assert hashlib.sha256(second).hexdigest() == generated_sha256(size)
    assert json.loads(s3.get_object(Bucket=name, Key="kling/job_store1.json")["Body"].read()) == event


async def test_a_redelivery_leaves_one_copy(
    origin: str, bucket: tuple[Any, str], moto_endpoint: str, tmp_path: Path
) -> None:
    s3, name = bucket
    event = an_event(f"{origin}/v/sample.mp4", f"{origin}/gen/{6 * MIB}/clip.mp4")
    for target in (str(tmp_path), f"s3://{name}/out"):
        handler = storage(target, endpoint_url=moto_endpoint if target.startswith("s3") else None)
        try:
            first = await handler.handle(event)
            again = await handler.handle(event)
        finally:
            await handler.aclose()
        assert first == again
    assert files(tmp_path) == ["job_store1.json", "job_store1/0.mp4", "job_store1/1.mp4"]
    assert keys(s3, name) == ["out/job_store1.json", "out/job_store1/0.mp4", "out/job_store1/1.mp4"]
    assert s3.list_multipart_uploads(Bucket=name).get("Uploads", []) == []


async def test_a_failed_job_stores_only_its_event(origin: str, tmp_path: Path) -> None:
    handler = storage(str(tmp_path), public_url="https://media.example.com/kling")
    event = an_event(status=JobStatus.FAILED, job_id="job_failed")
    try:
        report = await handler.handle(event)
    finally:
        await handler.aclose()
    assert report == {"stored_urls": [], "event_url": "https://media.example.com/kling/job_failed.json"}
    assert files(tmp_path) == ["job_failed.json"]


async def test_public_url_names_the_copies(origin: str, bucket: tuple[Any, str], moto_endpoint: str) -> None:
    _, name = bucket
    handler = storage(f"s3://{name}/v", endpoint_url=moto_endpoint, public_url="https://cdn.example.com/")
    try:
        report = await handler.handle(an_event(f"{origin}/blob"))
    finally:
        await handler.aclose()
    assert report == {
        "stored_urls": ["https://cdn.example.com/v/job_store1/0.webm"],
        "event_url": "https://cdn.example.com/v/job_store1.json",
    }


async def test_refuses_other_schemes_and_oversized_files(
    origin: str, bucket: tuple[Any, str], moto_endpoint: str, tmp_path: Path
) -> None:
    s3, name = bucket
    cases = [
        ("ftp://files.example.com/v.mp4", "output 0: refusing a ftp:// URL (only http:// and https://)"),
        (
            f"{origin}/sized/{12 * MIB}/clip.mp4",
            f"output 0 is {12 * MIB} bytes, exceeds max_bytes ({10 * MIB})",
        ),
        (f"{origin}/gen/{12 * MIB}/clip.mp4", f"output 0 exceeds max_bytes ({10 * MIB})"),
    ]
    for target in (str(tmp_path), f"s3://{name}"):
        handler = storage(
            target, endpoint_url=moto_endpoint if target.startswith("s3") else None, max_bytes=10 * MIB
        )
        try:
            for url, reason in cases:
                with pytest.raises(PermanentError) as caught:
                    await handler.handle(an_event(url))
                assert reason in str(caught.value)
        finally:
            await handler.aclose()
    assert files(tmp_path) == []  # no copy, no temp file left behind
    assert keys(s3, name) == []
    assert s3.list_multipart_uploads(Bucket=name).get("Uploads", []) == []  # the part sent was aborted


async def test_a_broken_download_is_retried_and_leaves_nothing(
    half_origin: str, bucket: tuple[Any, str], moto_endpoint: str, tmp_path: Path
) -> None:
    s3, name = bucket
    event = an_event(f"{half_origin}/cut.mp4")
    for target in (str(tmp_path), f"s3://{name}"):
        handler = storage(target, endpoint_url=moto_endpoint if target.startswith("s3") else None)
        try:
            with pytest.raises(DeliveryFailed, match=r"output 0 download from 127\.0\.0\.1"):
                await handler.handle(event)
        finally:
            await handler.aclose()
    assert files(tmp_path) == []
    assert keys(s3, name) == []
    assert s3.list_multipart_uploads(Bucket=name).get("Uploads", []) == []


async def test_a_cancelled_copy_aborts_its_upload_and_leaves_no_temp_file(
    half_origin: str, bucket: tuple[Any, str], moto_endpoint: str, tmp_path: Path
) -> None:
    s3, name = bucket
    event = an_event(f"{half_origin}/stall.mp4")
    started = {
        "folder": lambda: any(tmp_path.rglob("*.part")),
        "s3": lambda: bool(s3.list_multipart_uploads(Bucket=name).get("Uploads")),
    }
    for where, target in (("folder", str(tmp_path)), ("s3", f"s3://{name}")):
        handler = storage(target, endpoint_url=moto_endpoint if where == "s3" else None)
        try:
            copy = asyncio.create_task(handler.handle(event))
            await wait_until_async(started[where])  # 10 MiB in: a temp file / a part uploaded
            copy.cancel()  # what the dispatcher's asyncio.wait_for does when its timeout passes
            with pytest.raises(asyncio.CancelledError):
                await copy
        finally:
            await handler.aclose()
    assert files(tmp_path) == []
    assert keys(s3, name) == []
    assert s3.list_multipart_uploads(Bucket=name).get("Uploads", []) == []


async def test_an_expired_output_is_permanent(origin: str, tmp_path: Path) -> None:
    handler = storage(str(tmp_path))
    try:
        with pytest.raises(PermanentError, match="answered 404: expired"):
            await handler.handle(an_event(f"{origin}/gone.mp4"))
    finally:
        await handler.aclose()


@pytest.mark.parametrize("where", ["folder", "s3"])
async def test_100_mb_streams_in_flat_memory(
    where: str, origin: str, bucket: tuple[Any, str], moto_endpoint: str, tmp_path: Path
) -> None:
    s3, name = bucket
    size = 100 * MIB
    target = str(tmp_path) if where == "folder" else f"s3://{name}/big"
    handler = storage(target, endpoint_url=moto_endpoint if where == "s3" else None)
    try:
        # A small copy first: the S3 client and botocore's service models load once, whatever the size.
        await handler.handle(an_event(f"{origin}/v/sample.mp4", job_id="job_warm"))
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            await handler.handle(an_event(f"{origin}/gen/{size}/clip.mp4", job_id="job_big"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        await handler.aclose()
    growth = peak - before
    print(f"\n100 MB copy to {where}: peak traced memory growth {growth / MIB:.1f} MiB")
    assert growth < 20 * MIB
    if where == "folder":
        digest = hashlib.sha256()
        with (tmp_path / "job_big/0.mp4").open("rb") as stored:
            while chunk := stored.read(4 * MIB):
                digest.update(chunk)
        assert digest.hexdigest() == generated_sha256(size)
    else:
        head = s3.head_object(Bucket=name, Key="big/job_big/0.mp4")
        assert head["ContentLength"] == size
