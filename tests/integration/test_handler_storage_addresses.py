"""`storage` fetches outputs only from public addresses unless told otherwise: a loopback-only service
on 127.0.0.2 stands for what an output URL must not reach, however it is spelled or redirected to."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from handlers import PermanentError
from handlers.addresses import PublicOnlyTransport, refusal
from handlers.storage import StorageHandler
from receiver.background import BackgroundServer
from receiver.events import Job, JobStatus, make_event

pytestmark = pytest.mark.anyio


class Internal:
    """A service only this machine should reach; it counts every request that gets through."""

    def __init__(self) -> None:
        self.hits = 0

        async def secret(request: Request) -> Response:
            self.hits += 1
            return Response(b"internal secret", media_type="video/mp4")

        self.app = Starlette(routes=[Route("/secret.mp4", secret)])


@pytest.fixture
def internal() -> Iterator[tuple[Internal, int]]:
    service = Internal()
    with BackgroundServer(service.app, host="127.0.0.2") as server:
        yield service, server.port


@pytest.fixture
def redirector() -> Iterator[str]:
    """On 127.0.0.1, which the tests' own policy treats as public: redirects wherever it is told."""

    async def to(request: Request) -> Response:
        return RedirectResponse(request.query_params["url"], status_code=302)

    async def hops(request: Request) -> Response:
        left = int(request.path_params["n"])
        target = f"/hops/{left - 1}" if left else "/v.mp4"
        return RedirectResponse(target, status_code=302)

    async def video(request: Request) -> Response:
        return Response(b"public video", media_type="video/mp4")

    app = Starlette(routes=[Route("/to", to), Route("/hops/{n}", hops), Route("/v.mp4", video)])
    with BackgroundServer(app) as server:
        yield server.url


def loopback_one_is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The real rule, except that 127.0.0.1 stands for a public CDN here."""
    return None if address == ipaddress.ip_address("127.0.0.1") else refusal(address)


def an_event(*urls: str) -> dict[str, object]:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    job = Job(
        id="job_ssrf", provider="apiframe", status=JobStatus.SUCCEEDED, request={"prompt": "x"},
        created_at=now, output_urls=list(urls),
    )  # fmt: skip
    return make_event(job, "evt_job_ssrf", now=now)


async def refused(handler: StorageHandler, url: str) -> str:
    try:
        with pytest.raises(PermanentError) as caught:
            await handler.handle(an_event(url))
    finally:
        await handler.aclose()
    return str(caught.value)


@pytest.mark.parametrize(
    ("host", "listen", "reason"),
    [
        ("127.0.0.2", "127.0.0.2", "loopback"),
        ("localhost", "127.0.0.1", "loopback"),
        ("2130706433", "127.0.0.1", "loopback"),  # 127.0.0.1 as one decimal number
        ("0x7f000002", "127.0.0.2", "loopback"),
        ("127.2", "127.0.0.2", "loopback"),
        ("[::ffff:127.0.0.2]", "127.0.0.2", "loopback"),  # IPv4-mapped IPv6
        ("0.0.0.0", "127.0.0.1", "unspecified"),  # Linux connects it to this machine
    ],
)
async def test_loopback_however_spelled_is_refused_by_default(
    host: str, listen: str, reason: str, tmp_path: Path
) -> None:
    service = Internal()
    with BackgroundServer(service.app, host=listen) as server:
        message = await refused(StorageHandler(str(tmp_path)), f"http://{host}:{server.port}/secret.mp4")
    assert message.startswith("output 0: refusing to fetch from ")
    assert f"({reason} address)" in message
    assert "allow_private_hosts" in message
    assert service.hits == 0
    assert list(tmp_path.iterdir()) == []


async def test_a_redirect_to_a_private_address_is_refused(
    internal: tuple[Internal, int], redirector: str, tmp_path: Path
) -> None:
    service, port = internal
    handler = StorageHandler(str(tmp_path), transport=PublicOnlyTransport(refusal=loopback_one_is_public))
    message = await refused(handler, f"{redirector}/to?url=http://127.0.0.2:{port}/secret.mp4")
    assert "refusing to fetch from 127.0.0.2 (loopback address)" in message
    assert service.hits == 0


async def test_a_name_is_checked_by_the_address_connected_to(
    internal: tuple[Internal, int], redirector: str, tmp_path: Path
) -> None:
    """A name resolving to a refused and an allowed address is fetched from the allowed one only."""
    service, _ = internal
    port = int(redirector.rsplit(":", 1)[1])

    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.2", "127.0.0.1"] if host == "cdn.test" else []

    transport = PublicOnlyTransport(refusal=loopback_one_is_public, resolve=resolve)
    handler = StorageHandler(str(tmp_path), transport=transport)
    try:
        await handler.handle(an_event(f"http://cdn.test:{port}/v.mp4"))
    finally:
        await handler.aclose()
    assert (tmp_path / "job_ssrf/0.mp4").read_bytes() == b"public video"
    assert service.hits == 0


async def test_redirects_are_capped(redirector: str, tmp_path: Path) -> None:
    public = PublicOnlyTransport(refusal=loopback_one_is_public)
    handler = StorageHandler(str(tmp_path), transport=public)
    try:
        await handler.handle(an_event(f"{redirector}/hops/4"))  # five redirects: allowed
    finally:
        await handler.aclose()
    message = await refused(
        StorageHandler(str(tmp_path / "more"), transport=PublicOnlyTransport(refusal=loopback_one_is_public)),
        f"{redirector}/hops/5",
    )
    assert message == "output 0: more than 5 redirects"


async def test_at_most_20_outputs_per_event(redirector: str, tmp_path: Path) -> None:
    handler = StorageHandler(str(tmp_path), allow_private_hosts=True)
    try:
        with pytest.raises(PermanentError, match=r"^event has 21 output URLs, more than 20$"):
            await handler.handle(an_event(*[f"{redirector}/v.mp4?n={n}" for n in range(21)]))
    finally:
        await handler.aclose()
    assert list(tmp_path.iterdir()) == []


async def test_allow_private_hosts_fetches_from_loopback(
    internal: tuple[Internal, int], tmp_path: Path
) -> None:
    service, port = internal
    handler = StorageHandler(str(tmp_path), allow_private_hosts=True)
    try:
        await handler.handle(an_event(f"http://127.0.0.2:{port}/secret.mp4"))
    finally:
        await handler.aclose()
    assert service.hits == 1
