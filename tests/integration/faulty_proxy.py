"""A reverse proxy on 127.0.0.1 in front of the test homeserver that can spoil /sync
answers the way real networks and real proxies do: a response cut off half-way (the
connection drops mid-body) or a proxy's HTML "502 Bad Gateway" page while the homeserver
restarts. matrix-nio retries refused connections and timeouts itself, but not these."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from bot.devserver import free_port

HEADERS_FORWARDED = ("authorization", "content-type")


class FaultyProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.cut_syncs = 0  # the next N /sync answers stop half-way
        self.bad_gateway_syncs = 0  # the next N /sync answers are an HTML 502 page
        self.spoiled = 0
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Long-polling syncs in flight are dropped on stop, not waited for.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        is_sync = request.path.endswith("/sync")
        if is_sync and self.bad_gateway_syncs > 0:
            self.bad_gateway_syncs -= 1
            self.spoiled += 1
            return web.Response(
                status=502,
                text="<html><body>502 Bad Gateway</body></html>",
                content_type="text/html",
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() in HEADERS_FORWARDED}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
        ) as upstream:
            body = await upstream.read()
            status = upstream.status
            content_type = upstream.headers.get("Content-Type", "application/json")
        if is_sync and self.cut_syncs > 0:
            self.cut_syncs -= 1
            self.spoiled += 1
            resp = web.StreamResponse(status=status, headers={"Content-Type": content_type})
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            assert request.transport is not None
            request.transport.close()  # the rest never comes
            return resp
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})
