"""The HTTP API and the page of `evilm serve` (docs/serving.md). FastAPI routes over a `Service`;
every /api route needs the bearer token when the server has one; limits on query length, k,
offset, queries per request and body size; read-only (GET, POST of queries only).

    GET  /api/search?q=&k=&offset=&index=   text -> clips (and moments on a window index)
    POST /api/search {"queries": [...], "k", "index"}
    GET  /api/similar?key=&k=&index=        clip -> clips, from the stored embedding
    GET  /api/clips/{key}                   the clip's metadata
    GET  /api/clips/{key}/frames.jpg        its frame strip
    GET  /api/clips/{key}/video             its video file, with HTTP range requests
    POST /api/clips/{key}/answer {"question", "options", "k"}   with --qa: an answer about the clip
    GET  /api/indexes                       the indexes served
    GET  /healthz, /readyz, /metrics        liveness, readiness, Prometheus text
    GET  /                                  the search page (static files shipped in the wheel)
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hmac
import json
import logging
import math
import time
from contextlib import asynccontextmanager
from importlib import resources
from urllib.parse import unquote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from evilm_core.errors import EvilmError
from evilm_core.serve.batching import QueryBatcher
from evilm_core.serve.metrics import Metrics
from evilm_core.serve.service import ServedIndex, Service

log = logging.getLogger("evilm.serve")
PUBLIC = ("/healthz", "/readyz", "/metrics")  # answered without the token (no data in them)
SEARCH_PARAMETERS = [  # GET /api/search's query parameters, for the OpenAPI page (/docs)
    {"name": "q", "in": "query", "required": True, "schema": {"type": "string"},
     "description": "the words to search for"},
    {"name": "k", "in": "query", "schema": {"type": "integer", "default": 10}, "description": "results per page"},
    {"name": "offset", "in": "query", "schema": {"type": "integer", "default": 0}, "description": "results skipped"},
    {"name": "index", "in": "query", "schema": {"type": "string"}, "description": "the index (default: the first)"},
]


def create_app(service: Service) -> FastAPI:
    config, metrics = service.config, Metrics()

    async def load() -> None:
        await asyncio.get_running_loop().run_in_executor(None, service.load)
        for served in service.indexes.values():
            served.batcher = QueryBatcher(served.run_batch, size=lambda p: len(p[0]), max_batch=config.max_batch,
                                          max_wait_s=config.max_wait_ms / 1000, on_batch=metrics.batch,
                                          in_flight=config.batches_in_flight)
            await served.batcher.start()
        gc.freeze()  # what loading made lives as long as the server: later collections skip it (shorter pauses)
        service.started.set()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(load())  # the server answers meanwhile: "index loading"
        yield
        loading.cancel()
        for served in service.indexes.values():
            if served.batcher is not None:
                await served.batcher.stop()

    app = FastAPI(title="evilm", summary="Text-to-video search over evilm indexes", lifespan=lifespan)

    app.add_middleware(Guard, config=config, metrics=metrics)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return _error(err.status_code, err.detail)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        _ready(service)
        return {"ready": True}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.text(), media_type=metrics.content_type)

    @app.get("/api/indexes")
    async def indexes():
        _ready(service)
        return {"indexes": [{"name": s.name, "clips": len(s.searcher.index),
                             "directory": str(s.searcher.index.directory), "text_side": s.searcher.text.kind}
                            for s in service.indexes.values()],
                "qa": None if service.answerer is None else {"checkpoint": service.answerer.info.describe(),
                                                             "takes": service.answerer.takes}}

    @app.get("/api/search", openapi_extra={"parameters": SEARCH_PARAMETERS})
    async def search_get(request: Request):
        # parameters read here, not declared in the signature: FastAPI's parameter solving was a
        # fifth of the event loop's time per search under load (docs/serving.md, "Batching")
        params = request.query_params
        q, index = params.get("q", ""), params.get("index")
        k, offset = _integer(params, "k", 10), _integer(params, "offset", 0)
        served = _served(service, index)
        _check_page(config, k, offset)
        [hits] = await served.batcher.submit(([_checked_query(q, config)], k + offset))
        return _json_text(_results(served, q, hits[offset:], offset))

    @app.post("/api/search")
    async def search_post(request: Request):
        body = await _json_body(request, config)
        queries, k = body.get("queries"), body.get("k", 10)
        if not isinstance(queries, list) or not queries or not isinstance(k, int):
            raise HTTPException(422, 'expected {"queries": ["...", ...], "k": 10, "index": "name"}')
        if len(queries) > config.max_queries:
            raise HTTPException(413, f"{len(queries)} queries in one request; at most {config.max_queries}")
        served = _served(service, body.get("index"))
        _check_page(config, k, 0)
        texts = [_checked_query(q, config) for q in queries]
        hits = await served.batcher.submit((texts, k))
        return _json_text(f'{{"results": [{", ".join(_results(served, q, h, 0) for q, h in zip(queries, hits))}]}}')

    @app.get("/api/similar")
    async def similar(key: str, k: int = 10, offset: int = 0, index: str | None = None):
        served = _served(service, index)
        _check_page(config, k, offset)
        hits = await asyncio.get_running_loop().run_in_executor(None, served.similar, key, k + offset)
        if hits is None:
            raise HTTPException(404, f"no clip {key!r} in index {served.name!r}")
        return _json_text(_results(served, key, hits[offset:], offset))

    @app.get("/api/clips/{key:path}/frames.jpg")
    async def frames(key: str, index: str | None = None):
        served = _clip(service, index, key)
        jpeg = await asyncio.get_running_loop().run_in_executor(None, served.catalog.strip_jpeg, key)
        if jpeg is None:
            raise HTTPException(404, f"the frames of {key!r} cannot be read")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/clips/{key:path}/video")
    async def video(key: str, index: str | None = None):
        path = _clip(service, index, key).catalog.video_file(key)
        if path is None:
            raise HTTPException(404, f"no video file of {key!r} under the collection's root")
        return FileResponse(path)  # Starlette answers Range requests (206) itself

    @app.post("/api/clips/{key:path}/answer")
    async def answer(key: str, request: Request):
        body = await _json_body(request, config)
        served = _clip(service, body.get("index"), key)
        if service.answerer is None:
            raise HTTPException(404, "this server answers no questions (start it with --qa CHECKPOINT)")
        question, options, k = body.get("question"), body.get("options"), body.get("k", 5)
        if (question is not None and not isinstance(question, str)
                or options is not None and not isinstance(options, list)):
            raise HTTPException(422, 'expected {"question": "...", "options": ["...", ...], "k": 5}')
        if question is not None:
            _checked_query(question, config)
        _check_page(config, k, 0)
        run = functools.partial(service.answerer.answer, served.catalog.source, key, served.catalog.sample(key),
                                question, options, k)
        try:
            row = await asyncio.get_running_loop().run_in_executor(None, run)
        except EvilmError as err:
            raise HTTPException(422, str(err)) from None
        return _json({"index": served.name, **row})

    @app.get("/api/clips/{key:path}")
    async def clip(key: str, index: str | None = None):
        return _clip(service, index, key).catalog.describe(key)

    static = resources.files("evilm_core.serve") / "static"
    app.mount("/", StaticFiles(directory=str(static), html=True), name="page")
    return app


class Guard:
    """The token and the body size, checked before any route runs; each request's metrics; a bug
    answered with a clean 500. Pure ASGI: Starlette's BaseHTTPMiddleware (`@app.middleware`) took
    about a third of the event loop's time per search under load (docs/serving.md, "Batching")."""

    def __init__(self, app, config, metrics: Metrics):
        self.app, self.config, self.metrics = app, config, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, started = time.perf_counter(), 500, False

        async def watched(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        request = Request(scope)
        try:
            refusal = _refuse(request, self.config)
            await (refusal or self.app)(scope, receive, watched)
        except Exception:  # a bug: logged with its traceback, a clean 500 for the client
            log.exception("serve: %s %s failed", request.method, request.url.path)
            if started:
                raise
            await _error(500, "internal error (see the server's log)")(scope, receive, send)
        self.metrics.request(_route(request), request.method, status, time.perf_counter() - start)


# ---------------------------------------------------------------------------- helpers


def _json(body: dict) -> Response:
    """A JSON response serialised directly (FastAPI's encoder walks every value: slow for many results)."""
    return _json_text(json.dumps(body, ensure_ascii=False, allow_nan=False))


def _json_text(text: str) -> Response:
    """A response of JSON text already written (a result page: _results)."""
    return Response(text, media_type="application/json")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _route(request: Request) -> str:
    """The route's template (not the raw path: keys would make one metric series each)."""
    route = request.scope.get("route")
    return getattr(route, "path", None) or ("static" if request.method == "GET" else "other")


def _refuse(request: Request, config) -> JSONResponse | None:
    """The token and the body size, checked before any route runs."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > config.max_body_bytes):
        return _error(413, f"request body over {config.max_body_bytes} bytes")
    if config.token and request.url.path.startswith("/api/") and not _authorized(request, config.token):
        return JSONResponse({"error": "a bearer token is required (Authorization: Bearer TOKEN)"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})
    return None


def _authorized(request: Request, token: str) -> bool:
    """Authorization: Bearer TOKEN, or the page's cookie (a <video> element sends no header);
    compared in constant time."""
    given = request.headers.get("authorization", "")
    given = given[7:] if given.lower().startswith("bearer ") else unquote(request.cookies.get("evilm_token", ""))
    return hmac.compare_digest(given.encode(), token.encode())


async def _json_body(request: Request, config) -> dict:
    body = b""
    async for chunk in request.stream():  # a body without a Content-Length is cut off at the limit too
        body += chunk
        if len(body) > config.max_body_bytes:
            raise HTTPException(413, f"request body over {config.max_body_bytes} bytes")
    try:
        parsed = json.loads(body)
    except ValueError:
        raise HTTPException(422, "the request body is not JSON") from None
    if not isinstance(parsed, dict):
        raise HTTPException(422, "the request body must be a JSON object")
    return parsed


def _ready(service: Service) -> None:
    if service.error:
        raise HTTPException(503, service.error)
    if not service.ready:
        raise HTTPException(503, "index loading")


def _served(service: Service, name: str | None) -> ServedIndex:
    _ready(service)
    try:
        return service.index(name)
    except EvilmError as err:
        raise HTTPException(404, str(err)) from None


def _clip(service: Service, name: str | None, key: str) -> ServedIndex:
    served = _served(service, name)
    if served.catalog.row(key) is None:
        raise HTTPException(404, f"no clip {key!r} in index {served.name!r}")
    return served


def _checked_query(text, config) -> str:
    if not isinstance(text, str) or not text.strip():
        raise HTTPException(422, "the query is empty; give words to search for")
    if len(text) > config.max_query_chars:
        raise HTTPException(413, f"a query of {len(text)} characters; at most {config.max_query_chars}")
    return text.strip()


def _integer(params, name: str, default: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise HTTPException(422, f"{name} must be an integer, got {value[:40]!r}") from None


def _check_page(config, k, offset) -> None:
    if not isinstance(k, int) or not 1 <= k <= config.max_k:
        raise HTTPException(422, f"k must be 1 to {config.max_k}, got {k!r}")
    if not isinstance(offset, int) or not 0 <= offset <= config.max_offset:
        raise HTTPException(422, f"offset must be 0 to {config.max_offset}, got {offset!r}")


def _results(served: ServedIndex, query: str, hits, offset: int) -> str:
    """One query's page of results as JSON text: {"query", "index", "offset", "results": [{"rank",
    "score", the clip's metadata (catalog.describe), "start" and "end" of a window index's moment}]}.
    Written from each clip's metadata serialised once (catalog.described_json): json.dumps of
    the whole page was the largest share of the event loop's time per search."""
    rows = []
    for rank, hit in enumerate(hits, offset + 1):
        score = repr(float(hit.score)) if math.isfinite(hit.score) else "null"  # JSON has no NaN
        moment = (f', "start": {_number(hit.start)}, "end": {_number(hit.end)}'
                  if hit.start is not None else "")  # a window index's moment
        rows.append(f'{{"rank": {rank}, "score": {score}, {served.catalog.described_json(hit.key)}{moment}}}')
    query_json, index_json = json.dumps(query, ensure_ascii=False), json.dumps(served.name, ensure_ascii=False)
    return (f'{{"query": {query_json}, "index": {index_json}, '
            f'"offset": {offset}, "results": [{", ".join(rows)}]}}')


def _number(value) -> str:
    return json.dumps(float(value), allow_nan=False) if value is not None and math.isfinite(value) else "null"
