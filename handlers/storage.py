"""`storage`: copy a job's output files, streamed, to a folder or an S3-compatible bucket."""

from __future__ import annotations

import io
import json
import mimetypes
import os
import re
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import AsyncExitStack, aclosing, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote, urlsplit

import anyio
import anyio.to_thread
import httpx
import structlog

from handlers import ConfigError, PermanentError
from handlers._http import (
    DeliveryFailed,
    LoopResource,
    check_http_url,
    check_status,
    check_transport,
    excerpt,
    http_client,
    transport_failure,
)
from handlers.addresses import AddressRefused, PublicOnlyTransport
from receiver.clock import Clock, system_clock
from receiver.events import MAX_OUTPUT_URLS

logger = structlog.get_logger("handlers.storage")

CHUNK = 256 * 1024
PART_SIZE = 8 * 1024 * 1024  # S3 wants parts of at least 5 MiB (but the last)
DEFAULT_EXT = "mp4"
_EXT = re.compile(r"^[a-z0-9]{1,8}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Target:
    """Where copies go: `bucket` set for S3, else `folder`; `prefix` ends in "/" unless empty."""

    folder: Path | None = None
    bucket: str | None = None
    prefix: str = ""


def parse_target(target: object) -> Target:
    if not isinstance(target, str) or not target.strip():
        raise ConfigError("key 'target': must be a folder path, file:///path or s3://bucket/prefix")
    if target.startswith("s3://"):
        bucket, _, prefix = target[len("s3://") :].partition("/")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise ConfigError(f"key 'target': {bucket!r} is not a valid S3 bucket name")
        prefix = prefix.strip("/")
        return Target(bucket=bucket, prefix=f"{prefix}/" if prefix else "")
    if target.startswith("file://"):
        parts = urlsplit(target)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError("key 'target': a file:// URL must name a local path (file:///path)")
        return Target(folder=Path(parts.path).resolve())
    if "://" in target:
        scheme = target.split("://", 1)[0]
        raise ConfigError(f"key 'target': scheme {scheme!r} is not supported (a folder, file:// or s3://)")
    return Target(folder=Path(target).expanduser().resolve())


def extension(url: str, content_type: str | None) -> str:
    """From the URL's path (`.mp4`), else from the content type, else mp4."""
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower().lstrip(".")
    if _EXT.match(suffix):
        return suffix
    if content_type:
        mime = content_type.split(";", 1)[0].strip().lower()
        if mime.startswith(("video/", "image/", "audio/")):
            guessed = (mimetypes.guess_extension(mime) or "").lstrip(".")
            if _EXT.match(guessed):
                return guessed
    return DEFAULT_EXT


def output_key(prefix: str, job_id: str, n: int, ext: str) -> str:
    return f"{prefix}{job_id}/{n}.{ext}"


def event_key(prefix: str, job_id: str) -> str:
    return f"{prefix}{job_id}.json"


async def limited(chunks: AsyncIterator[bytes], max_bytes: int, label: str) -> AsyncGenerator[bytes]:
    """Pass chunks through, stopping with PermanentError once more than `max_bytes` went by."""
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise PermanentError(f"{label} exceeds max_bytes ({max_bytes}): stopped at {total} bytes")
        yield chunk


class Sink(Protocol):
    def url(self, key: str) -> str: ...

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes], content_type: str) -> None: ...

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...

    async def aclose(self) -> None: ...


class LocalSink:
    """Atomic writes: a temp file in the destination folder, fsynced, then renamed over the key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def url(self, key: str) -> str:
        return (self.folder / key).as_uri()

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes], content_type: str) -> None:
        path = self.folder / key
        # Made and opened on the event loop (microseconds): a cancellation that lands while a thread
        # makes them would lose the open file and leave the temp file behind.
        tmp, file = _temp_file(path)
        try:
            try:
                async for chunk in chunks:
                    await anyio.to_thread.run_sync(file.write, chunk)
                await anyio.to_thread.run_sync(file.flush)
                await anyio.to_thread.run_sync(os.fsync, file.fileno())
            finally:
                file.close()
            await anyio.to_thread.run_sync(_publish, tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        await self.put_stream(key, _one(data), content_type)

    async def aclose(self) -> None:
        return None


def _temp_file(path: Path) -> tuple[Path, BinaryIO]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.fchmod(fd, 0o644)  # mkstemp makes it 0600; the copy should read like any other file
    return Path(name), os.fdopen(fd, "wb")


def _publish(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)  # fsync the folder so the rename itself survives a crash
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


class S3Sink:
    """Streams to S3 with a multipart upload, holding one part in memory; small files in one PUT."""

    def __init__(self, bucket: str, endpoint_url: str | None, region: str | None, timeout: float) -> None:
        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
        except ImportError:
            raise ConfigError(
                "key 'target': s3:// needs aiobotocore (pip install 'kling-receiver[s3]')"
            ) from None
        self.bucket = bucket
        config = AioConfig(
            # MinIO, R2 and moto answer on one host: path-style; AWS itself keeps its default.
            s3={"addressing_style": "path"} if endpoint_url else None,
            # Several S3-compatible services reject the newer default checksum trailers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=min(timeout, 60.0),
            read_timeout=timeout,
            retries={"mode": "standard", "max_attempts": 3},
        )

        async def open_client(stack: AsyncExitStack) -> Any:
            session = get_session()
            return await stack.enter_async_context(
                session.create_client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
            )

        self._client: LoopResource[Any] = LoopResource(open_client)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        client = await self._client.get()
        with _s3_errors(f"s3 put {self.bucket}/{key}"):
            await client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes], content_type: str) -> None:
        client = await self._client.get()
        what = f"s3 upload {self.bucket}/{key}"
        # A BytesIO we wrote ourselves owns its buffer: botocore and aiohttp send it without a copy
        # (bytes would be wrapped in a BytesIO that copies the whole part on first read).
        part = io.BytesIO()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []

        async def send_part() -> None:
            nonlocal part, upload_id
            with _s3_errors(what):
                if upload_id is None:
                    created = await client.create_multipart_upload(
                        Bucket=self.bucket, Key=key, ContentType=content_type
                    )
                    upload_id = created["UploadId"]
                number = len(parts) + 1
                body, part = part, io.BytesIO()
                body.seek(0)
                try:
                    answer = await client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                    )
                finally:
                    body.close()  # frees the part now; the client's request objects die later
            parts.append({"ETag": answer["ETag"], "PartNumber": number})

        try:
            async for chunk in chunks:
                part.write(chunk)
                if part.tell() >= PART_SIZE:
                    await send_part()
            if upload_id is None:
                part.seek(0)
                with _s3_errors(what):
                    await client.put_object(Bucket=self.bucket, Key=key, Body=part, ContentType=content_type)
                return
            if part.tell():
                await send_part()
            with _s3_errors(what):
                await client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            if upload_id is not None:
                with anyio.CancelScope(shield=True):
                    await self._abort(client, key, upload_id)
            raise

    async def _abort(self, client: Any, key: str, upload_id: str) -> None:
        try:
            await client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:  # the original failure matters more; S3 lifecycle rules clean up
            logger.warning("s3_abort_failed", bucket=self.bucket, key=key, error=repr(exc))

    async def aclose(self) -> None:
        await self._client.aclose()


@contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """botocore errors as the dispatcher's outcomes: 4xx answers are permanent, the rest retried."""
    from botocore import exceptions

    try:
        yield
    except exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"{what}: {error.get('Code') or status}: {excerpt(str(error.get('Message') or ''))}"
        if 400 <= status < 500 and status not in (408, 429) and error.get("Code") not in _S3_TRANSIENT:
            raise PermanentError(message) from None
        raise DeliveryFailed(message) from None
    except (exceptions.NoCredentialsError, exceptions.PartialCredentialsError):
        raise PermanentError(
            f"{what}: no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)"
        ) from None
    except exceptions.NoRegionError:
        raise PermanentError(f"{what}: no region (set key 'region' or AWS_DEFAULT_REGION)") from None
    except exceptions.BotoCoreError as exc:
        raise DeliveryFailed(f"{what}: {type(exc).__name__}: {excerpt(str(exc))}") from None


_S3_TRANSIENT = frozenset({"RequestTimeout", "SlowDown", "RequestTimeTooSkewed", "Throttling"})


class StorageHandler:
    """Keys: `target` (`/path`, `file:///path`, `s3://bucket/prefix`); optional `endpoint_url` and
    `region` (S3-compatible services; credentials come from the standard AWS chain), `max_bytes` per
    file, `public_url` (base URL the stored keys are served under), `timeout` (seconds),
    `allow_private_hosts` (fetch outputs from loopback and private addresses too: off by default, as
    output URLs come from provider reports; see handlers.addresses).

    Succeeded jobs: every output to `{prefix}{job_id}/{n}.{ext}`, then the event to
    `{prefix}{job_id}.json`; failed jobs: the event only. Reports `{"stored_urls", "event_url"}`.
    """

    def __init__(
        self,
        target: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_bytes: int = 2_147_483_648,
        public_url: str | None = None,
        timeout: float = 300.0,
        allow_private_hosts: bool = False,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.target = parse_target(target)
        self.clock = clock
        if endpoint_url is not None:
            check_http_url(endpoint_url, "endpoint_url")
            if self.target.bucket is None:
                raise ConfigError("key 'endpoint_url': only applies to an s3:// target")
        if region is not None and (not isinstance(region, str) or not region):
            raise ConfigError("key 'region': must be a region name such as 'us-east-1'")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ConfigError("key 'max_bytes': must be a positive integer")
        if public_url is not None:
            check_http_url(public_url, "public_url")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError("key 'timeout': must be a positive number of seconds")
        self.max_bytes = max_bytes
        self.public_url = public_url.rstrip("/") + "/" if public_url else None
        if not isinstance(allow_private_hosts, bool):
            raise ConfigError("key 'allow_private_hosts': must be true or false")
        transport = check_transport(transport)
        if transport is None and not allow_private_hosts:
            transport = PublicOnlyTransport()
        self._http = http_client(
            float(timeout),
            transport,
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            # A proxy from the environment would make the connections, out of the address check's sight.
            trust_env=allow_private_hosts,
        )
        self._sink: Sink
        if self.target.bucket is not None:
            self._sink = S3Sink(self.target.bucket, endpoint_url, region, float(timeout))
        else:
            assert self.target.folder is not None
            self._sink = LocalSink(self.target.folder)

    async def handle(self, event: dict[str, Any]) -> dict[str, Any] | None:
        job = event["job"]
        job_id = str(job.get("id", ""))
        if not _JOB_ID.match(job_id):
            raise PermanentError(f"job id {job_id!r} cannot be used as a storage key")
        prefix = self.target.prefix
        stored: list[str] = []
        if event.get("type") == "job.succeeded":
            urls = job.get("output_urls") or []
            if len(urls) > MAX_OUTPUT_URLS:
                raise PermanentError(f"event has {len(urls)} output URLs, more than {MAX_OUTPUT_URLS}")
            for n, url in enumerate(urls):
                key = await self._copy(str(url), n, prefix, job_id)
                stored.append(self._url(key))
        body = json.dumps(event, indent=2, ensure_ascii=False).encode() + b"\n"
        key = event_key(prefix, job_id)
        await self._sink.put_bytes(key, body, "application/json")
        return {"stored_urls": stored, "event_url": self._url(key)}

    async def _copy(self, url: str, n: int, prefix: str, job_id: str) -> str:
        label = f"output {n}"
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            shown = f"{scheme}://" if scheme else "scheme-less"
            raise PermanentError(f"{label}: refusing a {shown} URL (only http:// and https://)")
        what = f"{label} download from {urlsplit(url).hostname}"
        client = await self._http.get()
        try:
            async with client.stream("GET", url) as response:
                if not 200 <= response.status_code < 300:
                    body = await _error_excerpt(response)
                    check_status(response.status_code, response.headers, body, what, now=self.clock())
                length = response.headers.get("content-length", "")
                if length.isdigit() and int(length) > self.max_bytes:
                    raise PermanentError(
                        f"{label} is {int(length)} bytes, exceeds max_bytes ({self.max_bytes})"
                    )
                content_type = response.headers.get("content-type")
                key = output_key(prefix, job_id, n, extension(url, content_type))
                chunks = limited(response.aiter_bytes(CHUNK), self.max_bytes, label)
                async with aclosing(chunks):
                    await self._sink.put_stream(key, chunks, content_type or "video/mp4")
                return key
        except httpx.UnsupportedProtocol:
            raise PermanentError(f"{label}: redirected to a URL that is not http or https") from None
        except AddressRefused as exc:
            raise PermanentError(f"{label}: {exc}") from None
        except httpx.TooManyRedirects:
            raise PermanentError(f"{label}: more than {MAX_REDIRECTS} redirects") from None
        except httpx.TransportError as exc:
            raise transport_failure(exc, what) from None

    def _url(self, key: str) -> str:
        if self.public_url:
            return self.public_url + quote(key, safe="/")
        return self._sink.url(key)

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._sink.aclose()


async def _error_excerpt(response: httpx.Response) -> str:
    """The start of an error body, without reading all of a large one."""
    async for chunk in response.aiter_bytes(1024):
        return excerpt(chunk.decode("utf-8", "replace"))
    return ""
