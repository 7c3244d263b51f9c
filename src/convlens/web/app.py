"""The FastAPI application of ``convlens serve``: the explorer page, the JSON API under ``/api`` (documented at
``/docs``) and the report's pages built on demand under ``/report/``."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from convlens.errors import ConvlensError
from convlens.models.classifier import ImageClassifier
from convlens.web import explain as explaining
from convlens.web.jobs import Busy, ResultCache, WorkerPool, cache_key, model_fingerprint
from convlens.web.uploads import MAX_UPLOAD_BYTES, ImageStore, UploadError

log = logging.getLogger("convlens.web")


class ExplainRequest(BaseModel):
    image: str = Field(description="image id from POST /api/images or GET /api/images")
    method: str = Field("gradcam", description="a CAM method (gradcam, scorecam...), deconvnet, guided, gradient, "
                                               "occlusion or feature_maps")
    layer: str | None = Field(None, description="module path; default: the method's own choice")
    unit: int | None = Field(None, description="channel of the layer, for the projections")
    target: str | None = Field(None, description="class index or name; default: the predicted class")
    arrays: list[str] | None = Field(None, description="names of the arrays to return; default: all")


def array_json(array: np.ndarray) -> dict:
    """An array for ``json_bytes``: its numbers stay a numpy array, which orjson writes in C, each float32 as
    the shortest text that reads back to the same float32 (not float64's 17 digits)."""
    array = np.ascontiguousarray(array)
    return {"shape": list(array.shape), "dtype": str(array.dtype), "data": array}


def json_bytes(content: Any) -> bytes:
    """JSON of ``content``, numpy arrays included (orjson; arrays of a type it does not write go through
    ``tolist``)."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
                        default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def create_app(model: ImageClassifier, images: list[Path] | None = None, *, workers: int = 1, queue: int = 8,
               max_upload_bytes: int = MAX_UPLOAD_BYTES, cache_size: int = 128) -> FastAPI:
    """The app for one loaded model and the images given on the command line (more can be uploaded)."""
    from convlens.layers import layer_table
    from convlens.web.page import explorer_page

    store = ImageStore()
    for path in images or []:
        try:
            store.add_file(Path(path))
        except UploadError as exc:
            raise ConvlensError(f"{path}: {exc}") from None
    pool = WorkerPool(model, workers, queue)
    cache = ResultCache(cache_size)
    fingerprint = model_fingerprint(model)
    spatial = [row for row in layer_table(model) if row.output_shape is not None and len(row.output_shape) == 3]
    card = {"spec": model.spec, "architecture": model.architecture, "input_size": list(model.input_size),
            "classes": model.class_names, "parameters": sum(p.numel() for p in model.module.parameters()),
            "layers": [{"name": r.name, "type": r.type, "channels": r.output_shape[0],
                        "shape": list(r.output_shape)} for r in spatial],
            "methods": explaining.methods(), "max_upload_bytes": max_upload_bytes}
    report_state: dict[str, Any] = {}
    default_layers: dict[str, Any] = {}  # method -> the layer it explains when none is chosen (found once)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.shutdown()
        store.close()

    app = FastAPI(title="convlens serve", description="See inside an image CNN: upload an image, choose a layer, a "
                  "unit, a method and a target; the JSON API returns a result's arrays() and summary().",
                  version="1", lifespan=lifespan)
    app.state.pool, app.state.store, app.state.cache = pool, store, cache

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_upload_bytes + 65536:
            return JSONResponse({"detail": f"upload over the limit of {max_upload_bytes / 2**20:.0f} MB"}, 413)
        try:
            return await call_next(request)
        except Exception as exc:  # noqa: BLE001 - one request's failure never stops the server
            log.exception("request failed")
            return JSONResponse({"detail": _one_line(exc)}, 500)

    @app.exception_handler(ConvlensError)
    async def convlens_error(request: Request, exc: ConvlensError):
        return JSONResponse({"detail": str(exc).splitlines()[0]}, 400)

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError):
        return JSONResponse({"detail": str(exc)}, exc.status)

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy):
        return JSONResponse({"detail": f"busy: {exc}"}, 503, headers={"Retry-After": "2"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return explorer_page(card)

    @app.get("/api/model", summary="The model card: input size, classes, layers with spatial maps, methods")
    async def model_card() -> dict:
        return card

    @app.get("/api/images", summary="The images the app knows (given or uploaded)")
    async def list_images() -> list[dict]:
        return [image.to_dict() for image in store.images.values()]

    @app.post("/api/images", summary="Upload an image (multipart field 'file'); checked by content, 20 MB at most")
    async def upload(file: UploadFile = File(...)) -> dict:
        data = await file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise UploadError(413, f"upload over the limit of {max_upload_bytes / 2**20:.0f} MB")
        stored = store.add_bytes(data, file.filename or "upload")
        return stored.to_dict()

    @app.get("/api/images/{image_id}", summary="An image's file", response_class=Response)
    async def image_file(image_id: str) -> FileResponse:
        return FileResponse(store.get(image_id).path)

    @app.post("/api/explain", summary="Run a method on an image: the result's arrays() and summary(), and the "
                                      "address of its figure")
    async def explain(request: ExplainRequest) -> JSONResponse:
        stored = store.get(request.image)
        target = _target(request.target)
        key = cache_key(fingerprint, stored.id, request.method, request.layer, request.unit, target)
        result, cached = cache.get(key), True
        if result is None:
            cached = False
            description = f"{request.method} on {stored.name}"
            result = await pool.run(description, lambda m, progress: explaining.explain(
                m, stored.path, request.method, request.layer, request.unit, target, progress, default_layers,
                stored.name))
            cache.put(key, result)
        wanted = request.arrays if request.arrays is not None else list(result.arrays)
        missing = [name for name in wanted if name not in result.arrays]
        if missing:
            raise HTTPException(400, f"no array {missing[0]!r}; this result has {', '.join(result.arrays)}")
        # bytes straight away: FastAPI's encoder would walk every number of the arrays one by one
        body = {"key": key, "cached": cached, "figure": f"/api/figures/{key}.png", "caption": result.caption,
                "kind": result.kind, "summary": result.summary,
                "arrays": {name: array_json(result.arrays[name]) for name in wanted}}
        return Response(json_bytes(body), media_type="application/json")

    @app.get("/api/images/{image_id}/predictions", summary="An image's top-3 classes and probabilities")
    async def image_predictions(image_id: str) -> list[dict]:
        stored = store.get(image_id)
        key = cache_key(fingerprint, stored.id, "predictions")
        found = cache.get(key)
        if found is None:
            found = await pool.run(f"predictions of {stored.name}",
                                   lambda m, progress: explaining.predictions(m, stored.path))
            cache.put(key, found)
        return found

    @app.get("/api/figures/{key}.png", summary="The figure of a computed result", response_class=Response)
    def figure(key: str) -> Response:  # plain def: FastAPI draws it on its thread pool, off the event loop
        result = cache.get(key)
        if not isinstance(result, explaining.Explained):
            raise HTTPException(404, "no such result (computed results are cached for a while; run it again)")
        return Response(result.png(), media_type="image/png")

    @app.get("/api/progress", summary="Computations running or waiting, with their progress")
    async def progress() -> list[dict]:
        return pool.progress()

    @app.get("/report/{path:path}", include_in_schema=False)
    async def report_page(path: str = "") -> Response:
        folder = report_state.get("folder")
        if folder is None:
            if "task" not in report_state:
                report_state["task"] = asyncio.create_task(_build_report(pool, store, report_state))
            task = report_state["task"]
            if task.done() and task.exception() is not None:
                message = _one_line(task.exception())
                report_state.clear()
                raise HTTPException(500, f"the report could not be built: {message}")
            return HTMLResponse(_building_page(pool), headers={"Refresh": "2"})
        target = (folder / (path or "index.html")).resolve()
        if folder.resolve() not in target.parents or not target.is_file():
            raise HTTPException(404, "no such page in the report")
        return FileResponse(target)

    return app


async def _build_report(pool: WorkerPool, store: ImageStore, state: dict) -> None:
    from convlens.report import report

    paths = [image.path for image in store.images.values()]
    if not paths:
        raise ConvlensError("no images yet: upload one, then open /report/ again")
    out = store.folder / "report"

    def build(model, progress):
        report(model, paths, progress=progress).save(out)
        return out

    state["folder"] = await pool.run(f"report of {len(paths)} images", build)


def _building_page(pool: WorkerPool) -> str:
    jobs = "".join(f"<li>{job['description']}: {job.get('step', job['state'])} {job['done']}/{job['total'] or '?'}"
                   f" ({job['seconds']} s)</li>" for job in pool.progress())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>building the report</title>"
            "<link rel='icon' href='data:,'></head><body style='font-family:sans-serif'><h1>Building the report"
            f"&hellip;</h1><p>This page reloads itself every 2 s.</p><ul>{jobs}</ul></body></html>")


def _target(text: str | None):
    if text is None or not text.strip() or text.strip() == "predicted":
        return None
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else text


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, ConvlensError) else text
