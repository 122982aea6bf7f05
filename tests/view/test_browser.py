"""The viewer in a real browser: Playwright drives the system's Chromium (headless) through the cohort page and a
slide page, and checks the pixels of screenshots with the overlay on and off.

Skips when Playwright's Python package or a Chromium is missing (``apt-get install chromium``; or set
``H2GNET_CHROMIUM`` to a Chromium/Chrome executable). With ``H2GNET_VIEW_SCREENSHOTS=DIR`` the screenshots of the
documentation are written there.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the viewer needs the [view] extra (pip install -e '.[view]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

from view_helpers import view_results_fixture  # noqa: F401 (a fixture by name)

from conftest import deadline, real_slide
from h2gnet.view import load_catalogue
from h2gnet.view.app import build_app, running

#: Chromium as the project's machines run it headless: no sandbox (root), no GPU, no calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
#: Longest wait for the page to load its tiles, ms (a bound: the tests do not time anything).
WAIT_MS = 30_000


def chromium() -> str:
    """The Chromium to drive, or skip the test."""
    given = os.environ.get("H2GNET_CHROMIUM")
    found = given or next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome",
                                                                  "google-chrome-stable")) if p), None)
    if not found or not Path(found).exists():
        pytest.skip("no Chromium found (apt-get install chromium, or set H2GNET_CHROMIUM)")
    return found


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        except sync_api.Error as exc:
            pytest.skip(f"{executable} does not start under Playwright: {str(exc).splitlines()[0]}")
        yield b
        b.close()


def open_page(browser, errors: list[str]):
    # bypass_csp: Playwright's waits evaluate code in the page, which the viewer's policy forbids to the page itself
    page = browser.new_page(viewport={"width": 1280, "height": 760}, bypass_csp=True)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(WAIT_MS)
    return page


def settled(page) -> None:
    """Wait until every image is loaded, the view has stopped moving, and two frames have been drawn since."""
    page.wait_for_function("() => { const v = window.h2gnet && h2gnet.viewer.viewport; return v && h2gnet.ready() && "
                           "Math.abs(v.getZoom(true) - v.getZoom(false)) <= 1e-9 * v.getZoom(false) && "
                           "v.getCenter(true).distanceTo(v.getCenter(false)) <= 1e-9; }")
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def pixel_at(page, x0: float, y0: float) -> tuple[int, int, int]:
    """The screenshot's colour at level-0 point (``x0``, ``y0``) of the slide."""
    x, y = page.evaluate("([x, y]) => { const p = h2gnet.viewer.world.getItemAt(0).imageToViewerElementCoordinates("
                         "new OpenSeadragon.Point(x, y)); const r = document.getElementById('viewer')"
                         ".getBoundingClientRect(); return [r.left + p.x, r.top + p.y]; }", [x0, y0])
    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    return shot.getpixel((round(x), round(y)))


def save_for_docs(page, name: str) -> None:
    """With ``H2GNET_VIEW_SCREENSHOTS=DIR``, the page's screenshot as DIR/NAME (256 colours: small enough for docs/)."""
    folder = os.environ.get("H2GNET_VIEW_SCREENSHOTS")
    if folder:
        shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
        shot.quantize(256, method=Image.Quantize.MEDIANCUT).save(Path(folder) / name, optimize=True)


def visible_slides(page) -> list[str]:
    return page.eval_on_selector_all("#cohort tbody tr:not([hidden]) a.slide-link",
                                     "els => els.map(e => e.textContent)")


def test_cohort_sort_filter_then_a_slide_with_its_overlay(browser, view_results) -> None:
    results, manifest = view_results
    errors: list[str] = []
    with deadline(180), running(build_app(load_catalogue(results, manifest))) as url:
        page = open_page(browser, errors)
        page.goto(url + "/")
        assert visible_slides(page) == ["wide", "tall", "broken"]
        page.click("th:has-text('tumour mm²')")
        assert visible_slides(page) == ["tall", "wide", "broken"]  # ascending; no value last
        page.click("th:has-text('tumour mm²')")
        assert visible_slides(page) == ["wide", "tall", "broken"]
        page.click("th:has-text('dice')")
        assert visible_slides(page)[:2] == ["wide", "tall"] and page.is_visible("text=is a truncated TIFF")
        page.select_option("#status", "failed")
        assert visible_slides(page) == ["broken"]
        page.select_option("#status", "")
        page.fill("#filter", "tal")
        assert visible_slides(page) == ["tall"] and page.inner_text("#shown") == "1 of 3 slides"
        page.fill("#filter", "")
        save_for_docs(page, "view-cohort.png")

        page.click("a.slide-link:text-is('wide')")
        page.wait_for_url(url + "/slide/wide")
        settled(page)
        zoom = page.evaluate("() => h2gnet.viewer.viewport.getZoom()")
        box = page.locator("#viewer").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -400)  # zoom in, as a user would
        page.wait_for_function(f"() => h2gnet.viewer.viewport.getZoom() > {zoom} * 1.1")
        settled(page)
        label = page.inner_text("#scalebar-label")
        assert label.endswith(("µm", "mm"))
        um, width, per_px = page.evaluate("() => [parseFloat(document.getElementById('scalebar-bar').dataset.um), "
                                          "document.getElementById('scalebar-bar').getBoundingClientRect().width, "
                                          "0.5 / h2gnet.viewer.world.getItemAt(0).viewportToImageZoom("
                                          "h2gnet.viewer.viewport.getZoom(true))]")
        assert width == pytest.approx(um / per_px, abs=1) and 40 <= width <= 120

        centre = (1536, 1024)  # the purple disc: tumour in the mask and in the annotation
        for name in ("heatmap", "prediction", "truth"):
            page.uncheck(f"#{name}-toggle")
        settled(page)
        on = pixel_at(page, *centre)
        page.uncheck("#mask-toggle")
        settled(page)
        off = pixel_at(page, *centre)
        # off: the slide's purple (120, 60, 160); on: 40 % of the mask's green (0, 255, 0) over it
        assert off[0] > off[1] + 30 and off[2] > off[1] + 60, off
        assert on[1] > off[1] + 50 and on[0] < off[0] - 20, (on, off)
        page.check("#mask-toggle")
        page.fill("#mask-opacity", "1")
        settled(page)
        assert pixel_at(page, *centre)[1] > 230  # opaque: the mask's own green
        assert not errors, errors


def test_real_slide(browser, tmp_path: Path) -> None:
    """CMU-1-Small-Region.svs (Aperio, JPEG tiles) segmented and shown; H2GNET_VIEW_SCREENSHOTS: the docs' picture."""
    pytest.importorskip("onnx", reason="the test model is built with onnx (pip install -e '.[train]')")
    from h2gnet.cli import main
    from tiny_models import colour_patch_model

    svs = real_slide("CMU-1-Small-Region.svs")
    model = colour_patch_model(tmp_path / "colour.onnx")
    results = tmp_path / "results"
    assert main(["-q", "segment", str(svs), "--patch-model", str(model), "--no-refine", "-o", str(results)]) == 0
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide,annotation,grade,split\n{svs},,,test\n")
    errors: list[str] = []
    with deadline(120), running(build_app(load_catalogue(results, manifest))) as url:
        page = open_page(browser, errors)
        page.goto(url + "/slide/CMU-1-Small-Region")
        settled(page)
        assert page.evaluate("() => h2gnet.viewer.world.getItemCount()") == 3  # slide, heatmap, mask
        page.fill("#heatmap-opacity", "0.35")
        page.fill("#mask-opacity", "0.25")
        page.evaluate("() => h2gnet.viewer.viewport.zoomTo(h2gnet.viewer.viewport.getHomeZoom() * 1.6)")
        settled(page)
        save_for_docs(page, "view-slide.png")
        assert not errors, errors
