"""The visual-search REST API (FastAPI) over a `SearchService`; `spaces/search/app.py` adds the web page.

Routes: POST /api/predict (multipart `file` or JSON {"image": base64}), GET /api/health (503 until ready),
GET /api/metrics (Prometheus text), GET /api/examples, GET /api/thumbnails/{id}, POST /api/catalog and
DELETE /api/catalog/{id} (Bearer token from HUBKIT_SEARCH_TOKEN). Every error is JSON {"error": "..."}.
Thumbnail URLs carry the app's mount path (`root_path`), so they work under `hubkit serve` and alone.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import io
import json
import logging
import os
import re
import time
from pathlib import Path
from urllib.parse import quote

from fastapi import Request
from PIL import Image

from ..errors import ConfigError, DataError, HubkitError
from ._index import ITEM_ID
from ._service import SearchService, Version

logger = logging.getLogger(__name__)
TOKEN_ENV = "HUBKIT_SEARCH_TOKEN"
DEFAULT_INDEX = "hubkit-demo/garment-index"
DEFAULT_MAX_UPLOAD = 8 * 1024 * 1024
MAX_K = 50
MAX_PIXELS = 50_000_000  # checked from the header, before decoding: a small file can claim a huge image
_URL = re.compile(r"^\s*[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_METADATA_FIELDS = ("category", "colour", "name")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def service_from_env(env: dict | None = None) -> SearchService:
    """Versions and knobs from HUBKIT_SEARCH_* variables: INDEX (version a), INDEX_B and SPLIT (B's share of the
    traffic, 0.5 by default) for an A/B test, MAX_BATCH (8), WINDOW_MS (5), FALLBACK (1)."""
    env = os.environ if env is None else env
    try:
        versions = [Version("a", env.get("HUBKIT_SEARCH_INDEX") or DEFAULT_INDEX)]
        if env.get("HUBKIT_SEARCH_INDEX_B"):
            split = float(env.get("HUBKIT_SEARCH_SPLIT", "0.5"))
            if not 0 <= split <= 1:
                raise ValueError(f"HUBKIT_SEARCH_SPLIT must be in [0, 1], got {split}")
            versions = [Version("a", versions[0].index, 1 - split), Version("b", env["HUBKIT_SEARCH_INDEX_B"], split)]
        return SearchService(
            versions,
            max_batch=int(env.get("HUBKIT_SEARCH_MAX_BATCH", "8")),
            window_ms=float(env.get("HUBKIT_SEARCH_WINDOW_MS", "5")),
            fallback=env.get("HUBKIT_SEARCH_FALLBACK", "1") not in ("0", "false", "no"),
        )
    except ValueError as err:
        raise ConfigError(f"bad search service setting: {err}") from None


def decode_image(data: bytes) -> Image.Image:
    from ..tasks import to_pil

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ApiError(
                    413, f"The image is {img.width}x{img.height} pixels; send at most {MAX_PIXELS // 1_000_000} MP"
                )
            image = to_pil(img)
            image.load()
            return image.convert("RGB")
    except HubkitError as err:
        raise ApiError(400, f"The upload is not a usable image: {err}") from None
    except Image.DecompressionBombError:
        raise ApiError(413, f"The image has too many pixels; send at most {MAX_PIXELS // 1_000_000} MP") from None
    except (OSError, ValueError) as err:
        raise ApiError(
            400, f"The upload is not a readable image ({type(err).__name__}); send a PNG, JPEG or WebP"
        ) from None


def _b64(value: object, limit: int) -> bytes:
    if not isinstance(value, str) or not value:
        raise ApiError(422, 'Send the image as a multipart field "file" or as JSON {"image": "<base64>"}')
    if _URL.match(value):
        raise ApiError(
            400, "Image URLs are refused (the server never fetches addresses): upload the file or send it as base64"
        )
    if value.startswith("data:"):
        value = value.partition(",")[2]
    if len(value) > limit * 4 // 3 + 8:
        raise ApiError(413, f"The image is larger than the {limit // 1024} KiB limit")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, '"image" is not valid base64 (a data: URL or plain base64 of the file)') from None


def create_app(
    service: SearchService | None = None,
    *,
    static_dir: str | Path | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    token_env: str = TOKEN_ENV,
    title: str = "hubkit search",
):
    """The FastAPI app. Without `service`, one from the environment (`service_from_env`)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    service = service or service_from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start()  # loads in the background; /api/health says 503 until ready
        yield

    app = FastAPI(title=title, lifespan=lifespan)
    app.state.service = service

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, err: ApiError):
        return error(err.status, err.message, err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, err):
        message = {404: f"No route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error(err.status_code, message.get(err.status_code, str(err.detail)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, err):
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}" for e in err.errors()]
        return error(422, "Invalid request: " + "; ".join(parts))

    @app.exception_handler(Exception)
    async def _unexpected(request, err):
        logger.exception("search API: %s %s failed", request.method, request.url.path)
        return error(500, f"Internal error ({type(err).__name__}); the server log has the details")

    @app.middleware("http")
    async def _metrics(request: Request, call_next):
        started = time.perf_counter()
        code = 500
        try:
            response = await call_next(request)
            code = response.status_code
            return response
        finally:
            route = getattr(request.scope.get("route"), "path", None)
            if route and route.startswith("/api/"):
                version = getattr(request.state, "version", "none")
                service.metrics.observe(route, version, code, time.perf_counter() - started)

    def require_ready() -> None:
        if not service.ready:
            service.start()
            detail = f": {service.error}" if service.error else ""
            raise ApiError(
                503, f"The search service is not ready (loading{detail}); retry shortly", {"Retry-After": "2"}
            )

    async def read_body(request: Request, limit: int) -> bytes:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise ApiError(413, f"The request is larger than the {limit // 1024} KiB limit")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"The request is larger than the {limit // 1024} KiB limit")
            chunks.append(chunk)
        body = b"".join(chunks)
        request._body = body  # lets request.form() parse what was read
        return body

    async def read_image(request: Request) -> tuple[Image.Image, dict]:
        """(image, other fields) from multipart `file` or JSON `image`."""
        ctype = request.headers.get("content-type", "").lower()
        body = await read_body(request, max_upload_bytes * 4 // 3 + 64 * 1024)  # base64 / multipart overhead
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=16)
            upload = form.get("file")
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            if upload is None or isinstance(upload, str):
                if _URL.match(str(form.get("url") or form.get("image") or "")):
                    raise ApiError(400, "Image URLs are refused (the server never fetches addresses): upload the file")
                raise ApiError(422, 'The multipart form has no file field named "file"')
            data = await upload.read(max_upload_bytes + 1)
        elif ctype.startswith("application/json"):
            try:
                payload = json.loads(body or b"null")
            except ValueError:
                raise ApiError(400, "The body is not valid JSON") from None
            if not isinstance(payload, dict):
                raise ApiError(422, 'The JSON body must be an object like {"image": "<base64>"}')
            if "url" in payload or "image_url" in payload:
                raise ApiError(
                    400,
                    "Image URLs are refused (the server never fetches addresses): upload the file or send it as base64",
                )
            data = _b64(payload.get("image"), max_upload_bytes)
            fields = {k: v for k, v in payload.items() if k != "image"}
        else:
            raise ApiError(
                415,
                f"Unsupported content type {ctype or '(none)'!r}: use multipart/form-data with a "
                '"file" field, or application/json with {"image": "<base64>"}',
            )
        if len(data) > max_upload_bytes:
            raise ApiError(413, f"The image is larger than the {max_upload_bytes // 1024} KiB limit")
        if not data:
            raise ApiError(400, "The uploaded file is empty")
        return decode_image(data), fields

    def thumb_url(request: Request, item_id: str) -> str:
        return f"{request.scope.get('root_path', '').rstrip('/')}/api/thumbnails/{quote(item_id)}"

    def check_token(request: Request) -> None:
        expected = os.environ.get(token_env, "")
        if not expected:
            raise ApiError(503, f"Catalogue writes are off: the server has no {token_env} set")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "Catalogue writes need 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise ApiError(403, "The token is not valid for catalogue writes")

    # -- routes ------------------------------------------------------------------------------------------
    @app.post("/api/predict")
    async def predict(request: Request, k: int = 5):
        started = time.perf_counter()
        if not 1 <= k <= MAX_K:
            raise ApiError(422, f"k must be between 1 and {MAX_K}, got {k}")
        require_ready()
        forced = request.headers.get("x-model-version")
        if forced is not None and forced not in service.served:
            raise ApiError(400, f"Unknown model version {forced!r}; versions: {', '.join(service.served)}")
        image, _ = await read_image(request)
        decoded = time.perf_counter()
        result = await service.search(image, k=k, version=forced, client=request.headers.get("x-client-id"))
        request.state.version = result["version"]
        for item in result["results"]:
            item["thumbnail"] = thumb_url(request, item["id"])
        result["timings_ms"] = {
            "decode": (decoded - started) * 1e3,
            **result["timings_ms"],
            "total": (time.perf_counter() - started) * 1e3,
        }
        return result

    @app.get("/api/health")
    async def health():
        if not service.ready:
            service.start()
        code, body = service.health()
        return JSONResponse(body, status_code=code)

    @app.get("/api/metrics")
    async def metrics():
        return PlainTextResponse(service.metrics.render(service.gauges()), media_type="text/plain; version=0.0.4")

    @app.get("/api/examples")
    async def examples(request: Request):
        require_ready()
        return {"examples": [{**e, "thumbnail": thumb_url(request, e["id"])} for e in service.examples()]}

    @app.get("/api/thumbnails/{item_id}")
    async def thumbnail(item_id: str):
        data = service.thumbnail(item_id) if ITEM_ID.match(item_id) else None
        if data is None:
            raise ApiError(404, f"No catalogue item {item_id!r}")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=300"})

    @app.post("/api/catalog", status_code=201)
    async def add_item(request: Request):
        check_token(request)
        require_ready()
        image, fields = await read_image(request)
        metadata = fields.get("metadata") or {}
        if isinstance(metadata, str):
            try:
                metadata = json.loads(metadata)
            except ValueError:
                raise ApiError(400, '"metadata" is not valid JSON') from None
        if not isinstance(metadata, dict):
            raise ApiError(422, '"metadata" must be a JSON object')
        metadata.update({k: str(fields[k]) for k in _METADATA_FIELDS if fields.get(k)})
        item_id = fields.get("id")
        if not item_id:
            raise ApiError(422, 'A catalogue item needs an "id"')
        try:
            added = service.add_item(str(item_id), image, metadata)
        except DataError as err:
            status = 409 if "already" in str(err) else 400
            raise ApiError(status, str(err)) from None
        logger.info("catalogue: added %s", item_id)
        return JSONResponse({**added, "thumbnail": thumb_url(request, added["id"])}, status_code=201)

    @app.delete("/api/catalog/{item_id}")
    async def delete_item(request: Request, item_id: str):
        check_token(request)
        require_ready()
        if not ITEM_ID.match(item_id):
            raise ApiError(400, f"Invalid item id {item_id!r}")
        if not service.remove_item(item_id):
            raise ApiError(404, f"No catalogue item {item_id!r}")
        logger.info("catalogue: deleted %s", item_id)
        return {"deleted": item_id}

    if static_dir is not None:
        from fastapi.staticfiles import StaticFiles

        static_dir = Path(static_dir)

        @app.get("/", include_in_schema=False)
        async def page():
            return FileResponse(static_dir / "index.html", headers={"Cache-Control": "no-cache"})

        app.mount("/static", StaticFiles(directory=static_dir), name="static")
    return app
