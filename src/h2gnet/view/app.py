"""``h2gnet view``: a small read-only ASGI app (Starlette, served by uvicorn) over one results folder.

Routes (GET and HEAD only): ``/`` the cohort page; ``/slide/KEY`` a slide's page; ``/thumb/KEY.jpg`` its
thumbnail; ``/tiles/KEY/{slide,mask}.dzi`` and ``/tiles/KEY/{slide,mask}_files/LEVEL/COL_ROW.{jpeg,png}`` Deep
Zoom images; ``/heatmap/KEY.png``; ``/outline/KEY/{prediction,truth}.json``; ``/static/NAME`` the page's own
files. ``KEY`` is looked up in the catalogue and the static names in a fixed list read at start: no part of a
request is ever joined to a path. Requests whose ``Host`` is not this machine's loopback name are refused while
bound to loopback (DNS rebinding).

>>> app = build_app(load_catalogue("results/"))  # doctest: +SKIP
>>> serve(app, "127.0.0.1", 8000)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from importlib import resources
from typing import Any

from h2gnet.errors import H2GNetError
from h2gnet.view.catalogue import Catalogue
from h2gnet.view.config import ViewConfig
from h2gnet.view.layers import Layers
from h2gnet.view.pages import cohort_page, error_page, slide_page
from h2gnet.view.tiles import CACHE_MB, TileSources

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, PlainTextResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # the optional [view] extra
    raise H2GNetError(None, f"`h2gnet view` needs the [view] extra (Starlette and uvicorn): "
                            f"pip install 'h2gnet[view]' ({exc})") from None

#: Default address: this machine only.
DEFAULT_HOST = ViewConfig.host
DEFAULT_PORT = ViewConfig.port
#: Host names accepted in requests while bound to a loopback address.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
#: Content types of the static files, by suffix.
_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".txt": "text/plain; charset=utf-8",
          ".md": "text/plain; charset=utf-8"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
#: Browser caching of tiles and pictures (s): the files do not change while the server runs.
_CACHE_SECONDS = 3600

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def static_files() -> dict[str, bytes]:
    """The page's own files (scripts, style, OpenSeadragon and its licence and buttons), by URL name, read once."""
    root = resources.files("h2gnet.view") / "static"
    files: dict[str, bytes] = {}

    def walk(folder: Any, prefix: str) -> None:
        for item in folder.iterdir():
            if item.is_dir():
                walk(item, f"{prefix}{item.name}/")
            elif any(item.name.endswith(s) for s in _TYPES):
                files[prefix + item.name] = item.read_bytes()

    walk(root, "")
    return files


def is_loopback(host: str) -> bool:
    """True for a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HostCheck:
    """ASGI middleware: answer 400 to requests whose ``Host`` header names another machine (DNS rebinding)."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...] | None) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        """Pass the request on, or answer 400 when its Host is not allowed."""
        if scope["type"] == "http" and self.allowed is not None:
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]", 1)[0]
            if name not in self.allowed:
                await PlainTextResponse("invalid Host header", status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _problem(status: int, exc: BaseException) -> PlainTextResponse:
    """A one-line error response (never a traceback)."""
    if isinstance(exc, H2GNetError):
        text = str(exc)
    elif isinstance(exc, KeyError):
        text = str(exc.args[0]) if exc.args else "not found"
    else:
        text = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return PlainTextResponse(f"error: {text}\n", status_code=status)


def build_app(catalogue: Catalogue, *, cache_mb: float = CACHE_MB,
              allowed_hosts: tuple[str, ...] | None = LOOPBACK_NAMES) -> ASGIApp:
    """The viewer of ``catalogue``: an ASGI app (GET/HEAD only; tiles cached up to ``cache_mb`` MB).

    ``allowed_hosts``: host names accepted in the ``Host`` header (None: any, for a server bound beyond loopback).
    """
    tiles = TileSources(catalogue, cache_mb)
    layers = Layers(catalogue, tiles)
    static = static_files()
    records = catalogue.records

    def record_or_404(request: Request) -> str:
        key = request.path_params["key"]
        if key not in records:
            raise KeyError(f"no slide named {key!r} in this results folder")
        return key

    def cohort(request: Request) -> Response:
        return HTMLResponse(cohort_page(catalogue))

    def slide(request: Request) -> Response:
        try:
            key = record_or_404(request)
        except KeyError as exc:
            return HTMLResponse(error_page("no such slide", str(exc.args[0])), status_code=404)
        return HTMLResponse(slide_page(records[key], layers.describe(key)))

    def binary(make: Callable[[str], bytes], media: str) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            try:
                key = record_or_404(request)
                body = make(key)
            except (KeyError, H2GNetError) as exc:
                return _problem(404, exc)
            except Exception as exc:  # a library's exception on a malformed file: the error, not a traceback
                return _problem(500, exc)
            return Response(body, media_type=media, headers={"Cache-Control": f"private, max-age={_CACHE_SECONDS}"})
        return endpoint

    def dzi(kind: str) -> Callable[[str], bytes]:
        return lambda key: tiles.dzi(key, kind).encode()

    def tile(kind: str) -> Callable[[Request], Response]:
        media = "image/jpeg" if kind == "slide" else "image/png"

        def endpoint(request: Request) -> Response:
            p = request.path_params
            return binary(lambda key: tiles.tile(key, kind, p["level"], p["col"], p["row"]), media)(request)
        return endpoint

    def outline(which: str) -> Callable[[str], bytes]:
        return lambda key: layers.outline_json(key, which)

    def static_file(request: Request) -> Response:
        name = request.path_params["name"]
        body = static.get(name)
        if body is None:
            return PlainTextResponse("error: no such file\n", status_code=404)
        media = next(t for s, t in _TYPES.items() if name.endswith(s))
        return Response(body, media_type=media, headers={"Cache-Control": f"private, max-age={_CACHE_SECONDS}"})

    routes = [
        Route("/", cohort),
        Route("/slide/{key}", slide),
        Route("/thumb/{key}.jpg", binary(layers.thumbnail, "image/jpeg")),
        Route("/heatmap/{key}.png", binary(layers.heatmap_png, "image/png")),
        Route("/outline/{key}/prediction.json", binary(outline("prediction"), "application/json")),
        Route("/outline/{key}/truth.json", binary(outline("truth"), "application/json")),
        Route("/tiles/{key}/slide.dzi", binary(dzi("slide"), "application/xml")),
        Route("/tiles/{key}/mask.dzi", binary(dzi("mask"), "application/xml")),
        Route("/tiles/{key}/slide_files/{level:int}/{col:int}_{row:int}.jpeg", tile("slide")),
        Route("/tiles/{key}/mask_files/{level:int}/{col:int}_{row:int}.png", tile("mask")),
        Route("/static/{name:path}", static_file),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
    ]
    app = Starlette(routes=routes)

    async def secured(scope: Scope, receive: Callable[[], Awaitable[Any]],
                      send: Callable[[Any], Awaitable[None]]) -> None:
        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                headers += [(k.lower().encode(), v.encode()) for k, v in _SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)
        await app(scope, receive, send_with_headers)

    wrapped = HostCheck(secured, allowed_hosts)
    wrapped.tiles = tiles  # type: ignore[attr-defined]  # for benchmarks: the cache's hits and misses
    return wrapped


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: any free port); H2GNetError naming the address if it fails.

    Made with protocol IPPROTO_TCP (not 0, as ``socket.create_server`` does) so that asyncio turns Nagle's
    algorithm off on its connections: with it on, every response after the first on a kept-alive connection
    waited for the client's delayed ACK (about 40 ms a tile).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise H2GNetError(None, f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
                                "is another server using the port? Try another --port") from None
    return sock


def _server(app: ASGIApp) -> uvicorn.Server:
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2)
    return uvicorn.Server(config)


def serve(app: ASGIApp, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``app`` on ``host``:``port`` until interrupted; ``on_ready`` gets the address once listening.

    A host beyond loopback warns: the slides are then visible to anyone who can reach this machine's port.
    """
    if not is_loopback(host):
        warnings.warn(f"--host {host}: serving beyond this machine; anyone who can reach port {port} can see "
                      "these slides and results (there is no login)", UserWarning, stacklevel=2)
    sock = _listen(host, port)
    server = _server(app)
    if on_ready is not None:
        on_ready(url_of(sock))
    server.run(sockets=[sock])


def url_of(sock: socket.socket) -> str:
    """``http://HOST:PORT`` of a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def running(app: ASGIApp, host: str = DEFAULT_HOST, port: int = 0, startup_s: float = 20.0) -> Iterator[str]:
    """Serve ``app`` from a background thread for the ``with`` block (tests, benchmarks); yields its address.

    The server stops when the block ends (within a few seconds); it never outlives the process.
    """
    sock = _listen(host, port)
    server = _server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="h2gnet-view")
    thread.start()
    pause = threading.Event()
    for _ in range(int(startup_s * 20)):  # bounded: at most startup_s seconds
        if server.started or not thread.is_alive():
            break
        pause.wait(0.05)
    try:
        if not server.started:
            raise H2GNetError(None, f"the viewer did not start within {startup_s:g} s")
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
