"""``convlens serve`` as a user meets it: a real server process, a real browser, real HTTP."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import convlens

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

SRC = Path(__file__).resolve().parents[2] / "src"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "baseline32.pt"
    torch.save(convlens.load_model("baseline:32", device="cpu").module.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def server(weights, sample_photos, tmp_path_factory):
    """``convlens serve baseline:32 PHOTO --weights W`` on a free port of 127.0.0.1, stopped afterwards."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", "from convlens.cli import main; main()", "serve", "baseline:32",
             str(sample_photos[0]), "--weights", str(weights), "--port", str(port), "--device", "cpu",
             "--queue", "3", "--max-upload-mb", "1"], stdout=sink, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/api/model", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"convlens serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def test_uploaded_photo_gives_the_library_grad_cam(server, browser, sample_photos, weights):
    photo = sample_photos[1]
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server + "/")
    page.set_input_files("#file", str(photo))  # the page uploads it and explains it with its default, Grad-CAM
    page.wait_for_function("""() => { const figure = document.getElementById('result-figure');
                                       return figure.getAttribute('src') !== '' && figure.complete
                                              && figure.naturalWidth > 0; }""", timeout=90_000)
    assert "Grad-CAM" in page.inner_text("#caption")
    page.close()
    assert errors == []

    image_id = hashlib.sha256(photo.read_bytes()).hexdigest()
    response = httpx.post(f"{server}/api/explain", json={"image": image_id, "method": "gradcam"}, timeout=60)
    assert response.status_code == 200
    body = response.json()
    assert body["cached"] is True  # the page's request computed it
    served = np.array(body["arrays"]["cam"]["data"], dtype=np.float32)

    model = convlens.load_model("baseline:32", weights=weights, device="cpu")
    from convlens.cam import GradCAM

    expected = GradCAM(model)(model.prepare([photo]))
    np.testing.assert_allclose(served, expected.maps.numpy(), atol=1e-5)
    assert body["arrays"]["cam"]["shape"] == [1, 32, 32]
    np.testing.assert_allclose(body["arrays"]["input"]["data"], model.prepare([photo]).numpy(), atol=1e-6)
    assert body["summary"]["methods"][0]["layers"] == list(expected.layers)
    served_top = httpx.get(f"{server}/api/images/{image_id}/predictions", timeout=60).json()
    library_top = convlens.predict(model, [photo], top=3)[0]
    assert [p["index"] for p in served_top] == [p.index for p in library_top]
    np.testing.assert_allclose([p["probability"] for p in served_top], [p.probability for p in library_top],
                               atol=1e-6)


def test_oversized_upload_is_413_and_non_image_415(server, tmp_path):
    big = os.urandom(1_200_000)  # the server under test takes 1 MB at most
    response = httpx.post(f"{server}/api/images", files={"file": ("big.png", big, "image/png")}, timeout=30)
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]
    response = httpx.post(f"{server}/api/images", files={"file": ("cat.png", b"not a picture" * 50, "image/png")},
                          timeout=30)
    assert response.status_code == 415
    assert "\n" not in response.json()["detail"]


def test_bad_requests_get_one_line_4xx(server):
    image = httpx.get(f"{server}/api/images").json()[0]["id"]
    cases = [({"image": "0" * 64}, 404), ({"image": image, "method": "magic"}, 400),
             ({"image": image, "method": "guided", "layer": "conv2", "unit": 999}, 400),
             ({"image": image, "method": "gradcam", "layer": "nope"}, 400),
             ({"image": image, "method": "gradcam", "target": "no such class"}, 400)]
    for request, status in cases:
        response = httpx.post(f"{server}/api/explain", json=request, timeout=60)
        assert response.status_code == status, (request, response.text)
        detail = response.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail


def test_twenty_concurrent_requests_finish_or_are_refused_cleanly(server):
    image = httpx.get(f"{server}/api/images").json()[0]["id"]

    def request(unit: int) -> int:  # distinct units: nothing comes from the cache
        response = httpx.post(f"{server}/api/explain", json={"image": image, "method": "guided", "layer": "conv2",
                                                             "unit": unit, "arrays": ["projection"]}, timeout=120)
        if response.status_code == 200:
            assert len(response.json()["arrays"]["projection"]["data"]) == 1
        return response.status_code

    with ThreadPoolExecutor(20) as threads:
        statuses = list(threads.map(request, range(20)))
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= 4  # one running and three queued always get through
    assert httpx.get(f"{server}/api/model", timeout=10).status_code == 200
    assert httpx.post(f"{server}/api/explain", json={"image": image, "method": "feature_maps", "layer": "relu1"},
                      timeout=60).status_code == 200


def test_check_image_applies_the_megapixel_rule():
    import io

    from PIL import Image

    from convlens.web.uploads import UploadError, check_image

    buffer = io.BytesIO()
    Image.new("1", (10_001, 10_001)).save(buffer, format="PNG")  # 100.02 megapixels, a few kB on disk
    with pytest.raises(UploadError) as raised:
        check_image(buffer.getvalue())
    assert raised.value.status == 413 and "megapixels" in str(raised.value)


def test_report_pages_are_built_on_demand(server, browser):
    first = httpx.get(f"{server}/report/", timeout=30)
    assert first.status_code == 200  # a "building" page that reloads itself, or the report when it is ready
    deadline = time.monotonic() + 300
    while "convlens report" not in httpx.get(f"{server}/report/index.html", timeout=30).text:
        assert time.monotonic() < deadline, "the report was not built in 5 minutes"
        time.sleep(1)
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(f"{server}/report/index.html")
    page.click("text=relu2")
    page.wait_for_url("**/report/layers/relu2/index.html")
    page.click("a[href^='units/']")
    page.wait_for_url("**/report/layers/relu2/units/*.html")
    page.close()
    assert errors == []
    assert httpx.get(f"{server}/report/%2e%2e/%2e%2e/etc/passwd", timeout=10).status_code == 404
