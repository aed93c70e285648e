"""The websocket server: protocol v1 at ``/v1/stream`` plus HTTP routes on the same port.

HTTP (answered in websockets' ``process_request``, before any upgrade): ``/health``, ``/ready``, ``/metrics``,
``/debug/finals`` (the latest finals' latency breakdowns), ``/`` and ``/static/*`` (the browser page in
``clients/web/``). Authentication (bearer tokens), the session limit
(HTTP 503 + ``Retry-After``) and TLS are applied here; each accepted stream is handed to a
:class:`~server.connection.Connection`. :meth:`RechkaServer.drain` is the SIGTERM path: stop accepting, let open
streams flush their finals for ``shutdown_grace`` seconds, then close whatever is left with 1001.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import functools
import hmac
import http
import json
import logging
import ssl
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from server.batcher_pool import BatcherPool
from server.config import ServerConfig
from server.connection import Connection, ConnectionContext
from server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, ServerMetrics
from server.models.base import BatchModel
from server.models.cache import sha256_file
from streaming.protocols.base import Limits, StreamProtocol
from streaming.protocols import deepgram
from streaming.protocols.v1 import V1Protocol
from streaming.errors import InvalidMessage
from streaming.protocols import vosk
from streaming.protocols.vosk import VoskProtocol

log = logging.getLogger("rechka.server")

STREAM_PATH = "/v1/stream"
DEEPGRAM_PATH = "/v1/listen"
VOSK_PATH = "/vosk"
STREAM_PATHS = (STREAM_PATH, DEEPGRAM_PATH, VOSK_PATH)
RETRY_AFTER_SECONDS = 5
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".json": "application/json", ".map": "application/json", ".svg": "image/svg+xml", ".png": "image/png",
    ".jpg": "image/jpeg", ".ico": "image/x-icon", ".wasm": "application/wasm", ".txt": "text/plain; charset=utf-8",
    ".wav": "audio/wav", ".woff2": "font/woff2",
}


def http_response(status: int, body: bytes, content_type: str,
                  extra_headers: Optional[Mapping[str, str]] = None) -> Response:
    """A complete HTTP response to return from ``process_request``."""
    st = http.HTTPStatus(status)
    headers = Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Length", str(len(body))),
        ("Content-Type", content_type),
        ("Cache-Control", "no-cache"),
        ("X-Content-Type-Options", "nosniff"),
    ])
    for name, value in (extra_headers or {}).items():
        headers[name] = value
    return Response(st.value, st.phrase, headers, body)


def json_response(status: int, obj: Any, extra_headers: Optional[Mapping[str, str]] = None) -> Response:
    return http_response(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json", extra_headers)


def bearer_token(request: Request) -> Optional[str]:
    """The token of ``Authorization: Bearer <token>`` (or Deepgram's ``Token <token>``), else of ``?token=<token>``,
    else ``None``."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    values = parse_qs(urlsplit(request.path).query).get("token")
    return values[0] if values else None


def token_allowed(token: Optional[str], tokens: frozenset[str]) -> bool:
    if not tokens:
        return True
    if token is None:
        return False
    return any(hmac.compare_digest(token.encode(), t.encode()) for t in tokens)


def static_file(root: Optional[Path], url_path: str) -> Optional[Path]:
    """The file under ``root`` for ``/`` or ``/static/<rel>``; ``None`` if absent or outside ``root``."""
    if root is None:
        return None
    if url_path in ("/", "/index.html"):
        rel = "index.html"
    elif url_path.startswith("/static/"):
        rel = unquote(url_path[len("/static/"):])
    else:
        return None
    parts = rel.replace("\\", "/").split("/")
    if not rel or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
        return None
    base = root.resolve()
    try:
        candidate = (base / rel).resolve()
        candidate.relative_to(base)
    except (ValueError, OSError):
        return None
    return candidate if candidate.is_file() else None


def model_info(models: Mapping[str, BatchModel], placement: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per model: its ``describe()`` plus the audited placement (``device``, ``dtype``…), for ready and /health.

    Both are open to unauthenticated clients, so no file-system path is shown: a path becomes its file name and the
    file's SHA-256 (first 16 hex digits) under ``<key>_sha256``."""
    out: dict[str, Any] = {}
    for name, model in models.items():
        info = dict(model.describe())
        info.update(placement.get(name, {}))
        out[name] = without_paths(info)
    return out


def without_paths(info: Mapping[str, Any]) -> dict[str, Any]:
    """``info`` with every absolute path replaced by its name (and a file's hash beside it)."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, str) and (value.startswith(("/", "~")) or (len(value) > 2 and value[1:3] == ":\\")):
            path = Path(value).expanduser()
            out[key] = path.name
            if path.is_file():
                out[f"{key}_sha256"] = file_sha256(path)[:16]
        else:
            out[key] = value
    return out


@functools.lru_cache(maxsize=None)
def file_sha256(path: Path) -> str:
    """The file's SHA-256, computed once per path."""
    return sha256_file(path)


class RechkaServer:
    """One server: the batchers, the websocket listener and the HTTP routes. ``await start()``, later ``drain()``."""

    def __init__(self, config: ServerConfig, models: Mapping[str, BatchModel],
                 placement: Mapping[str, Mapping[str, Any]], metrics: Optional[ServerMetrics] = None) -> None:
        missing = {"vad", "segmentation", "embedding", "asr"} - set(models)
        if missing:
            raise ValueError(f"RechkaServer needs the models vad, segmentation, embedding and asr; "
                             f"missing {', '.join(sorted(missing))}")
        self.config = config
        self.models = dict(models)
        self.placement = {name: dict(placement.get(name, {})) for name in models}
        self.metrics = metrics or ServerMetrics()
        self.models_info = model_info(self.models, self.placement)
        self.pool: Optional[BatcherPool] = None
        self.server: Optional[Server] = None
        self.draining = False
        self.connections: set[Connection] = set()
        self._slots: set[ServerConnection] = set()
        self._started = time.monotonic()
        self._port: Optional[int] = None

    # ----------------------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start the batchers and listen (``config.port`` 0 picks a free port; see :attr:`port`)."""
        devices = {name: str(info.get("device", "cpu")) for name, info in self.placement.items()}
        self.pool = BatcherPool(self.models, devices, self.config.max_batch, self.config.max_wait_ms / 1000,
                                self.metrics, cpu_threads=self.config.cpu_inference_threads,
                                background_nice=self.config.background_nice, final_lanes=self.config.final_lanes)
        self.server = await serve(
            self._handle, self.config.host, self.config.port, process_request=self._process_request,
            max_size=self.config.max_message_bytes, ssl=self._ssl_context(), server_header="rechka",
            # no pong deadline: while a fast client is held back (backpressure) its pongs wait behind its audio;
            # dead clients are caught by the idle and flush timeouts instead
            ping_timeout=None, logger=logging.getLogger("rechka.websockets"))
        self._port = int(self.server.sockets[0].getsockname()[1])

    @property
    def port(self) -> int:
        """The port listened on (the real one when ``config.port`` is 0)."""
        assert self._port is not None, "start() first"
        return self._port

    @property
    def url(self) -> str:
        scheme = "wss" if self.config.tls else "ws"
        return f"{scheme}://{self.config.host}:{self.port}{STREAM_PATH}"

    def _ssl_context(self) -> Optional[ssl.SSLContext]:
        if not self.config.tls:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.config.tls_cert), str(self.config.tls_key))
        return context

    async def drain(self, grace: Optional[float] = None) -> None:
        """Stop accepting; open streams flush their finals, get ``end`` and close 1001 within ``grace`` seconds."""
        grace = self.config.shutdown_grace if grace is None else grace
        self.draining = True
        if self.server is not None:
            # keep listening while draining: new connections and /ready get 503 + Retry-After, not a refused TCP
            # connection (a load balancer moves on); the listener closes with the last stream
            deadline = asyncio.get_running_loop().time() + grace
            for connection in list(self.connections):
                connection.begin_drain()
            tasks = [t for t in self.server.handler_tasks if not t.done()]
            if tasks:
                await asyncio.wait(tasks, timeout=grace)
            self.server.close(close_connections=True, code=1001, reason="server shutting down")
            # a client that stopped reading never answers the close handshake: do not wait websockets' 10 s
            # close_timeout for it past the grace period
            try:
                await asyncio.wait_for(self.server.wait_closed(),
                                       max(0.1, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                for ws in list(self.server.all_connections):  # those closing too
                    ws.transport.abort()
                await self.server.wait_closed()
        if self.pool is not None:
            await self.pool.close()

    async def close(self) -> None:
        """Close at once (tests): like ``drain(0)``."""
        await self.drain(0.0)

    # ----------------------------------------------------------------------------------------------- HTTP
    def _process_request(self, connection: ServerConnection, request: Request) -> Optional[Response]:
        path = urlsplit(request.path).path
        if path in STREAM_PATHS:
            return self._admit(connection, request, path)
        if path == "/health":
            problems = self.pool.problems(self.config.model_timeout) if self.pool is not None else {}
            status = "unhealthy" if problems else "draining" if self.draining else "ok"
            body = {"status": status, "uptime_seconds": round(time.monotonic() - self._started, 1),
                    "sessions": len(self._slots), "models": self.models_info}
            if problems:
                body["problems"] = problems  # model name → what is wrong; a supervisor restarts the process
            return json_response(503 if problems else 200, body)
        if path == "/ready":
            ready = not self.draining and len(self._slots) < self.config.max_sessions
            body = {"ready": ready, "sessions": len(self._slots), "max_sessions": self.config.max_sessions,
                    "draining": self.draining}
            return json_response(200 if ready else 503, body,
                                 None if ready else {"Retry-After": str(RETRY_AFTER_SECONDS)})
        if path == "/metrics":
            return http_response(200, self.metrics.render(), METRICS_CONTENT_TYPE)
        if path == "/debug/finals":  # the latest finals' latency breakdowns (server.connection.final_trace)
            return json_response(200, {"finals": list(self.metrics.final_traces)})
        file = static_file(self.config.static_dir, path)
        if file is not None:
            content_type = CONTENT_TYPES.get(file.suffix.lower(), "application/octet-stream")
            return http_response(200, file.read_bytes(), content_type)
        return http_response(404, b"not found\n", "text/plain; charset=utf-8")

    def _admit(self, connection: ServerConnection, request: Request, path: str) -> Optional[Response]:
        if not token_allowed(bearer_token(request), self.config.tokens):
            self.metrics.connections_rejected.labels(reason="unauthorized").inc()
            if path == DEEPGRAM_PATH:
                return json_response(401, deepgram.error_body("Invalid credentials.", str(uuid.uuid4())),
                                     {"WWW-Authenticate": 'Token realm="rechka"', "dg-error": "Invalid credentials."})
            return http_response(401, b"missing or unknown token: send Authorization: Bearer <token> "
                                      b"or ?token=<token>\n", "text/plain; charset=utf-8",
                                 {"WWW-Authenticate": 'Bearer realm="rechka"'})
        if self.draining or len(self._slots) >= self.config.max_sessions:
            reason = "draining" if self.draining else "full"
            self.metrics.connections_rejected.labels(reason=reason).inc()
            text = "server is shutting down\n" if self.draining else "server is at its session limit; retry later\n"
            return http_response(503, text.encode(), "text/plain; charset=utf-8",
                                 {"Retry-After": str(RETRY_AFTER_SECONDS)})
        if path == DEEPGRAM_PATH:
            try:
                deepgram.parse_query(parse_qs(urlsplit(request.path).query))
            except deepgram.InvalidQuery as exc:
                self.metrics.connections_rejected.labels(reason="bad_request").inc()
                return json_response(400, deepgram.error_body(str(exc), str(uuid.uuid4())), {"dg-error": str(exc)})
        if path == VOSK_PATH:
            try:
                vosk.parse_query(parse_qs(urlsplit(request.path).query))
            except InvalidMessage as exc:
                self.metrics.connections_rejected.labels(reason="bad_request").inc()
                return http_response(400, f"{exc}\n".encode(), "text/plain; charset=utf-8")
        # Reserve a slot now (so concurrent handshakes cannot overshoot); freed when the TCP connection ends.
        self._slots.add(connection)
        release = asyncio.ensure_future(connection.wait_closed())
        release.add_done_callback(lambda _: self._slots.discard(connection))
        return None

    # ----------------------------------------------------------------------------------------------- streams
    @property
    def limits(self) -> Limits:
        """What every protocol object gets from this server."""
        config = self.config
        return Limits(session=config.session, models=self.models_info, max_message_bytes=config.max_message_bytes,
                      idle_timeout=config.idle_timeout,
                      flush_timeout=max(config.shutdown_grace, config.flush_timeout))

    def _protocol_for(self, ws: ServerConnection) -> StreamProtocol:
        """The protocol object of the path the client upgraded on (its handshake was checked by ``_admit``)."""
        assert ws.request is not None
        url = urlsplit(ws.request.path)
        session_id = str(uuid.uuid4())
        if url.path == DEEPGRAM_PATH:
            created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
            return deepgram.DeepgramProtocol(session_id, self.limits, deepgram.parse_query(parse_qs(url.query)),
                                             created.replace("+00:00", "Z"))
        if url.path == VOSK_PATH:
            return VoskProtocol(session_id, self.limits, vosk.parse_query(parse_qs(url.query)))
        return V1Protocol(session_id.replace("-", ""), self.limits)

    async def _handle(self, ws: ServerConnection) -> None:
        assert self.pool is not None
        context = ConnectionContext(config=self.config, pool=self.pool, metrics=self.metrics,
                                    models=self.models_info)
        connection = Connection(ws, context, self._protocol_for(ws))
        self.connections.add(connection)
        try:
            if self.draining:
                connection.begin_drain()
            await connection.run()
        finally:
            self.connections.discard(connection)
