"""The viewer over HTTP (uvicorn on 127.0.0.1, a free port): every route, bad requests, bad slides, the CLI."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the viewer needs the [view] extra (pip install -e '.[view]')")
pytest.importorskip("uvicorn", reason="the viewer needs the [view] extra (pip install -e '.[view]')")

from view_helpers import results_copy_fixture, view_results_fixture  # noqa: F401 (fixtures by name)

from conftest import deadline
from h2gnet.cli import main
from h2gnet.errors import H2GNetError
from h2gnet.view import load_catalogue
from h2gnet.view.app import build_app, running, serve

SRC = Path(__file__).resolve().parents[2] / "src"


def get(url: str, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    """One request with ``path`` sent exactly as written (no client-side normalisation of ``..`` or ``%2F``)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def server(view_results):
    results, manifest = view_results
    app = build_app(load_catalogue(results, manifest))
    with deadline(120), running(app) as url:
        yield url, app


def test_every_route(server) -> None:
    url, _ = server
    kinds = {
        "/": "text/html", "/slide/wide": "text/html", "/thumb/wide.jpg": "image/jpeg",
        "/heatmap/wide.png": "image/png", "/outline/wide/prediction.json": "application/json",
        "/outline/wide/truth.json": "application/json", "/tiles/wide/slide.dzi": "application/xml",
        "/tiles/wide/mask.dzi": "application/xml", "/tiles/wide/slide_files/12/0_0.jpeg": "image/jpeg",
        "/tiles/wide/slide_files/9/0_0.jpeg": "image/jpeg", "/tiles/wide/mask_files/7/0_0.png": "image/png",
        "/static/openseadragon/openseadragon.min.js": "text/javascript", "/static/view.css": "text/css",
        "/static/openseadragon/LICENSE.txt": "text/plain", "/static/openseadragon/images/zoomin_rest.png": "image/png",
        "/static/cohort.js": "text/javascript", "/static/slide.js": "text/javascript",
    }
    for path, kind in kinds.items():
        status, headers, body = get(url, path)
        assert status == 200 and headers["content-type"].startswith(kind) and body, path
        assert "default-src 'self'" in headers["content-security-policy"] and headers["x-content-type-options"]
    assert get(url, "/", "HEAD")[0] == 200


def test_cohort_page(server, view_results) -> None:
    url, _ = server
    page = get(url, "/")[2].decode()
    for text in ('href="/slide/wide"', 'href="/slide/tall"', 'href="/slide/broken"', "is a truncated TIFF",
                 "tumour mm²", "classified %", "patch-wise (heatmap &gt; 0.5)", "patch: h2gnet", ">dice<", ">recall<",
                 ">precision<", 'src="/thumb/wide.jpg"'):
        assert text in page, text
    table = (view_results[0] / "evaluation" / "slides.csv").read_text().splitlines()
    dice = [row for row in table if row.startswith("prediction,wide,")]
    assert f'data-value="{float(dice[0].split(",")[5])!r}"' in page
    assert "Traceback" not in page and "<script src=\"http" not in page  # nothing from a CDN


def test_slide_page_and_overlays(server) -> None:
    url, _ = server
    page = get(url, "/slide/wide")[2].decode()
    data = json.loads(re.search(r'<script type="application/json" id="slide-data">(.*?)</script>', page).group(1))
    assert data["slide"] == {"width": 3072, "height": 2048, "mpp": 0.5} and data["problems"] == []
    assert data["mask"]["mpp"] == 16.0 and data["mask"]["width"] == pytest.approx(1.0, abs=0.01)
    assert data["heatmap"]["width"] == pytest.approx(1.0, abs=0.01) and data["prediction"]["rings"] >= 1
    assert data["truth"]["rings"] == 2  # the tumour polygon and the stroma's, as evaluation reads them
    assert 'src="/static/openseadragon/openseadragon.min.js"' in page
    # the mask tile: tumour (the purple disc at the centre) opaque, background transparent
    dzi = get(url, "/tiles/wide/mask.dzi")[2].decode()
    assert 'Width="96" Height="64"' in dzi
    tile = Image.open(io.BytesIO(get(url, "/tiles/wide/mask_files/7/0_0.png")[2]))
    assert tile.mode == "RGBA" and tile.getpixel((48, 32))[3] == 255 and tile.getpixel((2, 2))[3] == 0
    heat = Image.open(io.BytesIO(get(url, "/heatmap/wide.png")[2]))
    assert heat.mode == "RGBA" and heat.size[0] >= 1024
    rings = json.loads(get(url, "/outline/wide/prediction.json")[2])["rings"]
    xs = rings[0][0::2]
    assert 3072 * 0.3 < min(xs) < max(xs) < 3072 * 0.7  # around the disc, in level-0 px


def test_tiles_are_cached(server) -> None:
    url, app = server
    cache = app.tiles.tiles
    path = "/tiles/tall/slide_files/10/1_1.jpeg"
    first = get(url, path)[2]
    hits = cache.hits
    assert get(url, path)[2] == first and cache.hits == hits + 1


@pytest.mark.parametrize("path", [
    "/slide/../../../../etc/passwd", "/slide/..%2F..%2F..%2Fetc%2Fpasswd", "/slide/%2Fetc%2Fpasswd",
    "/slide/%2e%2e%2fwide", "/thumb/..%2F..%2Fslides%2Fwide.jpg", "/thumb/%2Fetc%2Fpasswd.jpg",
    "/static/../../view/app.py", "/static/..%2F..%2Fview%2Fapp.py", "/static/%2e%2e/%2e%2e/cli.py",
    "/static/%2Fetc%2Fpasswd", "/static//etc/passwd", "/static/..\\..\\cli.py", "/static/openseadragon/../../app.py",
    "/static/..%5c..%5ccli.py", "//etc/passwd", "/tiles/wide/slide_files/0/0_0.jpeg/../../../../../etc/passwd",
    "/tiles/..%2Fwide/slide.dzi", "/tiles/wide/slide_files/-1/0_0.jpeg", "/tiles/wide/slide_files/99/0_0.jpeg",
    "/tiles/wide/slide_files/12/999_0.jpeg", "/tiles/wide/slide_files/12/0_0.png", "/heatmap/broken.png",
    "/outline/tall/..%2F..%2Fwide/truth.json", "/slide/wide%00", "/slide/nope", "/outline/broken/truth.json",
    "/tiles/broken/mask.dzi",
])
def test_bad_requests_reach_no_file(server, path: str) -> None:
    url, _ = server
    status, headers, body = get(url, path)
    assert status in (400, 404), (path, status)
    assert b"root:" not in body and b"import " not in body and b"Traceback" not in body


def test_read_only_and_local_only(server) -> None:
    url, _ = server
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert get(url, "/", method)[0] == 405
    assert get(url, "/", headers={"Host": "attacker.example"})[0] == 400  # DNS rebinding
    assert get(url, "/", headers={"Host": "localhost:1234"})[0] == 200


def test_a_bad_slide_shows_its_error_and_the_server_goes_on(server) -> None:
    url, _ = server
    status, _, body = get(url, "/slide/broken")
    page = body.decode()
    assert status == 200 and "is a truncated TIFF" in page and "the slide cannot be shown" in page
    assert "Traceback" not in page
    status, _, body = get(url, "/tiles/broken/slide.dzi")
    assert status == 404 and b"broken.tiff: is a truncated TIFF" in body
    assert get(url, "/tiles/wide/slide_files/11/0_0.jpeg")[0] == 200


def test_damaged_outputs_and_a_vanished_slide(results_copy) -> None:
    results, manifest = results_copy
    (results / "wide.heatmap.tiff").write_bytes(b"II*\x00 nonsense")
    (results / "wide.geojson").write_text("{")
    (results / "wide.mask.tiff").unlink()
    app = build_app(load_catalogue(results, manifest))
    with deadline(60), running(app) as url:
        (manifest.parent / "tall.tiff").unlink()  # gone after the start: its page says so, the others work
        page = get(url, "/slide/wide")[2].decode()
        for problem in ("wide.heatmap.tiff: is not an h2gnet heatmap", "wide.geojson: ", "wide.mask.tiff: no mask "
                        "output for this slide"):
            assert problem in page, problem
        assert "Traceback" not in page and get(url, "/heatmap/wide.png")[0] == 404
        page = get(url, "/slide/tall")[2].decode()
        assert "tall.tiff: no such file" in page and "Traceback" not in page
        assert get(url, "/tiles/tall/slide_files/10/0_0.jpeg")[0] == 404
        assert get(url, "/tiles/wide/slide_files/10/0_0.jpeg")[0] == 200


def test_symlinked_output_leading_out_is_not_served(results_copy, tmp_path: Path) -> None:
    results, manifest = results_copy
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(secret)
    (results / "wide.overlay.png").unlink()
    os.symlink(secret, results / "wide.overlay.png")
    app = build_app(load_catalogue(results, manifest))
    with deadline(60), running(app) as url:
        status, _, body = get(url, "/thumb/wide.jpg")
        assert status == 404 and b"outside the results folder" in body
        assert get(url, "/thumb/tall.jpg")[0] == 200


def test_serving_beyond_loopback_warns(view_results, monkeypatch) -> None:
    import h2gnet.view.app as view_app

    def refuse(host: str, port: int) -> None:  # never bind beyond loopback in a test
        raise H2GNetError(None, f"not listening on {host} in a test")

    monkeypatch.setattr(view_app, "_listen", refuse)
    with pytest.warns(UserWarning, match="no login"), pytest.raises(H2GNetError):
        serve(build_app(load_catalogue(view_results[0])), "0.0.0.0", 8000)


def test_cli_port_in_use_and_bad_folder(view_results, capsys) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert main(["view", str(view_results[0]), "--port", str(port)]) == 2
    assert f"--port {port}: cannot listen there" in capsys.readouterr().err
    assert main(["view", str(view_results[0].parent / "slides")]) == 2
    assert "not an output folder of `h2gnet segment`" in capsys.readouterr().err


def test_cli_serves_until_interrupted(view_results) -> None:
    results, manifest = view_results
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    with subprocess.Popen([sys.executable, "-m", "h2gnet", "view", str(results), "--slides", str(manifest),
                           "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            with deadline(60):
                line = proc.stdout.readline()
            assert "3 slides (1 failed, 0 without a slide file)" in line, line
            url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
            assert get(url, "/")[0] == 200 and get(url, "/tiles/wide/slide_files/12/1_1.jpeg")[0] == 200
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
            assert "Traceback" not in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
