"""The report and the web app against the work they replace.

- Served Grad-CAM: what the page does for an uploaded photo (upload it over HTTP, ``POST /api/explain`` for
  Grad-CAM with the ``cam`` array, fetch the figure PNG) against the bare library call on the same photo
  (``convlens.cam(model, photo)``: decode, preprocess, Grad-CAM), on the default model (EfficientNet-Lite0,
  224 px). The result cache is emptied before every served call (cold cache). Target <= 1.5x. A real uvicorn
  server on 127.0.0.1, a real HTTP client: the cost of HTTP, JSON and the worker hand-off is in the ratio.
  ``CONVLENS_BENCH_PHOTO`` picks another photo (the overhead is fixed, so a small photo shows it more).
- Report of the 178 leaf validation images (12 in quick mode) with the leaf model (the study's Keras model where
  this convlens reads Keras files, else the baseline CNN at 32 px, random weights) against the separate library
  calls that make the same content: ``predict``; ``feature_maps`` per image (each image's feature maps at the
  report's layers); ``filters`` of the layers' convolutions; per layer ``top_activations`` + ``top_examples``
  for the same 16 units; ``cam`` with the same CAM methods; ``occlusion``, ``deconv`` and ``invariance`` for the
  8 detailed images. Target <= 0.7x: the report's one shared pass feeds the predictions, the
  feature maps, the top-k tables and the histograms. Checked first: the same probabilities and the same CAM maps
  on both sides; then one timed run each (a run takes minutes).
"""

from __future__ import annotations

import functools
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench.harness import DEVICE, BenchCase
from bench.inputs import LEAF, PHOTO, SHARED_DATA, skimage_coffee


def _photo_file(folder: Path) -> Path:
    chosen = os.environ.get("CONVLENS_BENCH_PHOTO")
    if chosen:
        return Path(chosen)
    if PHOTO.is_file():
        return PHOTO
    path = folder / "coffee.png"
    skimage_coffee().save(path)
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _served_gradcam_case(folder: Path) -> BenchCase:
    import convlens

    photo = _photo_file(folder)
    setup = functools.cache(lambda: _served_setup(photo))  # the server starts when the case runs, not when listed

    def served() -> np.ndarray:
        app, client, _ = setup()
        app.state.cache.clear()
        image = client.post("/api/images", files={"file": (photo.name, photo.read_bytes())}).json()["id"]
        body = client.post("/api/explain", json={"image": image, "method": "gradcam", "arrays": ["cam"]}).json()
        assert client.get(body["figure"]).status_code == 200
        return np.array(body["arrays"]["cam"]["data"], dtype=np.float32)

    def library() -> np.ndarray:
        return convlens.cam(setup()[2], photo, method="gradcam").maps.numpy()

    def check(ours, theirs) -> None:
        # the same numbers first: float32 in JSON as the shortest text that reads back to the same float32
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)

    return BenchCase("served gradcam request (default model, cold cache)", served, library,
                     "library: convlens.cam(model, photo)", check, max_ratio=1.5,
                     note=f"{photo.name}; upload + POST /api/explain (cam array) + figure PNG over HTTP")


def _served_setup(photo: Path):
    """The default model, ``convlens serve``'s app for it on a free port of 127.0.0.1, and an HTTP client."""
    import httpx
    import uvicorn

    import convlens
    from convlens.web import create_app

    model = convlens.load_model(device=str(DEVICE))
    app = create_app(model)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return app, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120), model


def _leaf_model():
    import convlens
    from convlens.demo import load_leaf_keras
    from convlens.errors import ConvlensError

    try:
        model = load_leaf_keras(SHARED_DATA / "leaf-keras", LEAF / "train")
        return model.to(str(DEVICE)), "the leaf Keras model"
    except ConvlensError:
        torch.manual_seed(0)
        return convlens.load_model("baseline:32", device=str(DEVICE)), "baseline:32 (random weights)"


def _report_case(quick: bool, folder: Path) -> BenchCase | None:
    import convlens
    from convlens.data import list_images
    from convlens.predict import predict
    from convlens.report import compute

    validation = LEAF / "validation"
    if not validation.is_dir():
        return None  # no leaf data (CONVLENS_SHARED_DATA): the case is left out
    paths = list_images(validation)[: 12 if quick else None]
    details, units = 8, 16
    # the report's default methods but CAM, which needs a global-average-pooling head the leaf models lack
    methods = [m for m in compute.report_cam_methods() if m != "cam"]
    setup = functools.cache(_leaf_model)  # loaded when the case runs, not when it is listed
    counter = iter(range(10**6))

    def report():
        result = convlens.report(setup()[0], paths, units=units, details=details, methods=methods)
        result.save(folder / f"report-{next(counter)}")
        return result

    def separate():
        model = setup()[0]
        layers = compute.default_layers(model)
        out = folder / f"separate-{next(counter)}"
        predictions = predict(model, paths)
        for index, path in enumerate(paths):
            convlens.feature_maps(model, path, layers).save(out / f"featuremaps-{index}")
        convlens.filters(model, [c for c in _convs(model, layers) if c]).save(out / "filters")
        for layer in layers:
            convlens.top_activations(model, paths, layer, units=f"0:{units}", k=9).save(out / f"topk-{layer}")
        cams = convlens.cam(model, paths, method=methods)
        cams.save(out / "cam")
        middle = layers[len(layers) // 2]
        for index, path in enumerate(paths[:details]):
            convlens.occlusion(model, path, stride=max(1, round(min(model.input_size) / 14))).save(
                out / f"occlusion-{index}")
            for rule in ("deconvnet", "guided"):
                convlens.deconv(model, path, middle, top=4, position="max", rule=rule).save(
                    out / f"deconv-{index}-{rule}")
        convlens.invariance(model, paths[:details], points={"translate": 9, "scale": 5, "rotate": 13}).save(
            out / "invariance")
        return predictions, cams

    def check(ours, theirs) -> None:
        predictions, cams = theirs
        arrays = ours.arrays()
        assert setup()[1] == name, f"the case is named for {name} but ran {setup()[1]}"
        for row, top in zip(arrays["probabilities"], predictions, strict=True):
            np.testing.assert_allclose([row[p.index] for p in top], [p.probability for p in top], atol=1e-6)
        for method in methods:
            np.testing.assert_allclose(arrays[f"cam/{method}"], cams[method].maps.numpy(), atol=1e-5)

    name = "the leaf Keras model" if (SHARED_DATA / "leaf-keras").is_dir() else "baseline:32 (random weights)"
    # the checked call is the timed one: each takes minutes (the peer ~7 on an idle machine, tens on a loaded one)
    return BenchCase(f"report of {len(paths)} leaf validation images ({name})", report, separate,
                     "the separate library calls", check, max_ratio=0.7, repetitions=0,
                     note=f"{units} unit pages per layer, {details} detailed images, {len(methods)} CAM methods "
                          "(same maps, same probabilities); HTML and PNGs written on both sides")


def _convs(model, layers: list[str]) -> list[str | None]:
    from convlens.report import compute

    with torch.inference_mode():
        return [compute.feeding_conv(model, layer, _channels(model, layer)) for layer in layers]


def _channels(model, layer: str) -> int:
    from convlens.hooks import capture

    with capture(model, [layer]) as seen, torch.inference_mode():
        model.module(torch.zeros(1, 3, *model.input_size, device=model.device))
    return int(seen[layer].shape[1])


def cases(quick: bool) -> list[BenchCase]:
    folder = Path(tempfile.mkdtemp(prefix="convlens-bench-report-"))
    found = [_served_gradcam_case(folder), _report_case(quick, folder)]
    return [case for case in found if case is not None]
