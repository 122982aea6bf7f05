"""Tile latency of ``h2gnet view`` on a 100k × 100k slide, measured from a client over loopback.

Usage:
    python benchmarks/view_tiles.py [--side 100000] [--cache .bench] [--tiles 300] [--parallel 6]

Makes once (cached under --cache): a pyramidal tiled JPEG TIFF of ``side`` × ``side`` px at 0.25 µm/px with
levels at downsamples 1, 4, 16, 64 (an Aperio-like pyramid), about 40 % tissue (an ellipse of phantom texture:
16 distinct tiles, encoded once, written as they are, so a 100k slide takes seconds), and a results folder for
it: ``status.csv``, ``NAME.json`` and a tumour mask TIFF at 16 µm/px. Then it starts ``h2gnet view`` in a child
process on 127.0.0.1 and requests Deep Zoom tiles the way a viewer does:

* cold: ``--tiles`` distinct tiles inside the tissue (full resolution and the two levels below), one at a time,
  each requested for the first time (OpenSlide decodes the slide's JPEG tiles, the server encodes the Deep Zoom
  tile);
* cached: the same tiles again (the server's LRU of encoded tiles);
* viewport: ``--parallel`` connections (what a browser opens per host) fetch the 8 × 5 tiles of a 1920 × 1080
  view at full resolution, at places never seen: the time until the view is complete, and tiles/s;
* mask: every tile of the mask's full resolution (PNG with transparency), cold.

Prints a table and, last, a JSON object (latencies in ms).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

MPP = 0.25
TILE = 256
DOWNSAMPLES = (1, 4, 16, 64)
DZ_TILE = 254  # h2gnet.view.tiles.TILE_SIZE


def _texture_tiles(count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` 256-px RGB tiles of phantom H&E texture (pink stroma, purple nuclei)."""
    import cv2

    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(count):
        img = np.clip(np.array([225, 150, 190]) + rng.normal(0, 10, (TILE, TILE, 3)), 0, 255).astype(np.uint8)
        for _ in range(40):
            centre = (int(rng.integers(0, TILE)), int(rng.integers(0, TILE)))
            cv2.circle(img, centre, int(rng.integers(3, 8)), (110, 60, 160), -1)
        tiles.append(cv2.GaussianBlur(img, (3, 3), 0))
    return tiles


def _encoded(tiles: list[np.ndarray], scratch: Path) -> tuple[list[bytes], bytes | None]:
    """The tiles JPEG-encoded exactly as tifffile writes them (and the JPEG tables, if any)."""
    import tifffile

    strip = np.concatenate(tiles, axis=1)
    tifffile.imwrite(scratch, strip, tile=(TILE, TILE), photometric="rgb", compression="jpeg",
                     compressionargs={"level": 85})
    with tifffile.TiffFile(scratch) as tif, open(scratch, "rb") as fh:
        page = tif.pages[0]
        out = []
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            fh.seek(offset)
            out.append(fh.read(count))
        tables = page.jpegtables
    scratch.unlink()
    return out, tables


def make_slide(path: Path, side: int) -> None:
    """A ``side``² pyramidal JPEG TIFF at 0.25 µm/px, tissue in an ellipse (about 40 % of the area)."""
    import tifffile

    encoded, tables = _encoded([np.full((TILE, TILE, 3), 243, np.uint8)] + _texture_tiles(16), path.with_suffix(".t"))
    blank, tissue = encoded[0], encoded[1:]
    tmp = path.with_suffix(".part")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for k, ds in enumerate(DOWNSAMPLES):
            n = -(-side // ds)
            grid = -(-n // TILE)

            def tiles(grid: int = grid) -> object:
                for r in range(grid):
                    dy = (r + 0.5) / grid - 0.5
                    for c in range(grid):
                        dx = (c + 0.5) / grid - 0.5
                        inside = (dx / 0.36) ** 2 + (dy / 0.36) ** 2 <= 1  # π·0.36² ≈ 0.41 of the square
                        yield tissue[(r * 7 + c * 3) % len(tissue)] if inside else blank

            tw.write(tiles(), shape=(n, n, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                     compression="jpeg", jpegtables=tables, subfiletype=1 if k else 0,
                     resolution=(1e4 / (MPP * ds), 1e4 / (MPP * ds)), resolutionunit="CENTIMETER",
                     description="h2gnet benchmark slide" if k == 0 else None, metadata=None)
    tmp.replace(path)


def make_results(results: Path, slide: Path, side: int) -> None:
    """A results folder for ``slide``: status.csv, the summary and a tumour mask at 16 µm/px."""
    import cv2

    from h2gnet.conventions import slide_outputs
    from h2gnet.io.raster import Raster
    from h2gnet.outputs.mask_tiff import write_mask_tiff

    results.mkdir(parents=True, exist_ok=True)
    out = slide_outputs(results, slide.stem)
    n = round(side * MPP / 16)
    mask = np.zeros((n, n), np.uint8)
    cv2.ellipse(mask, (n // 2, n // 2), (n // 6, n // 8), 30, 0, 360, 1, -1)
    write_mask_tiff(out.mask, Raster(mask.astype(bool), 16.0, MPP), (side, side))
    summary = {"slide": str(slide.resolve()), "name": slide.stem, "slide_mpp": MPP, "dimensions_l0": [side, side],
               "mask_mpp": 16.0, "design": "benchmark", "outputs": {"mask": out.mask.name, "summary": out.summary.name}}
    out.summary.write_text(json.dumps(summary))
    (results / "status.csv").write_text(f"slide,status,seconds,error\n{slide.resolve()},done,0.00,\n")


class Client:
    """One keep-alive HTTP connection per thread, to the viewer at ``host``:``port``."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=60)

    def get(self, path: str) -> float:
        """Seconds until the whole response to ``path`` has arrived (status 200 checked)."""
        t = time.perf_counter()
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = response.read()
        seconds = time.perf_counter() - t
        if response.status != 200 or not body:
            raise RuntimeError(f"{path}: HTTP {response.status} {body[:200]!r}")
        return seconds


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"median_ms": round(statistics.median(ms), 2), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2),
            "n": len(ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=100_000, help="slide side, px (default 100000)")
    parser.add_argument("--cache", type=Path, default=Path(".bench"), help="where the slide is kept")
    parser.add_argument("--tiles", type=int, default=300, help="tiles timed cold and cached")
    parser.add_argument("--parallel", type=int, default=6, help="connections for the viewport fill")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    folder = args.cache / f"view-{args.side}"
    folder.mkdir(parents=True, exist_ok=True)
    slide = folder / f"big{args.side}.tiff"
    if not slide.exists():
        t = time.perf_counter()
        make_slide(slide, args.side)
        print(f"wrote {slide} ({slide.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t:.1f} s")
    make_results(folder / "results", slide, args.side)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, "-m", "h2gnet", "view", str(folder / "results"), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = server.stdout.readline()  # type: ignore[union-attr]
        found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not found:
            raise SystemExit(f"the viewer did not start: {line}")
        port = int(found.group(1))
        key = slide.stem
        rng = np.random.default_rng(args.seed)
        top = int(np.ceil(np.log2(args.side)))  # Deep Zoom level of full resolution

        def tissue_tiles(level: int, count: int, exclude: set) -> list[tuple[int, int, int]]:
            scale = 2 ** (top - level)
            width = -(-args.side // scale)  # px at this level (ceil)
            grid = -(-width // DZ_TILE)
            out: list[tuple[int, int, int]] = []
            while len(out) < count:
                c, r = (int(v) for v in rng.integers(0, grid, 2))
                if ((c + 0.5) / grid - 0.5) ** 2 + ((r + 0.5) / grid - 0.5) ** 2 <= 0.3 ** 2 and \
                        (level, c, r) not in exclude:
                    exclude.add((level, c, r))
                    out.append((level, c, r))
            return out

        seen: set = set()
        per_level = args.tiles // 3
        tiles = [t for level in (top, top - 1, top - 2) for t in tissue_tiles(level, per_level, seen)]
        client = Client("127.0.0.1", port)
        client.get(f"/tiles/{key}/slide.dzi")  # opens the slide
        client.get(f"/tiles/{key}/mask.dzi")
        cold = [client.get(f"/tiles/{key}/slide_files/{lv}/{c}_{r}.jpeg") for lv, c, r in tiles]
        cached = [client.get(f"/tiles/{key}/slide_files/{lv}/{c}_{r}.jpeg") for lv, c, r in tiles]
        mask_top = int(np.ceil(np.log2(round(args.side * MPP / 16))))  # the mask's full resolution (16 µm/px)
        mask_grid = -(-round(args.side * MPP / 16) // DZ_TILE)
        mask = [client.get(f"/tiles/{key}/mask_files/{mask_top}/{c}_{r}.png")
                for r in range(mask_grid) for c in range(mask_grid)]

        # viewports of 1920 × 1080 at full resolution: 8 × 5 tiles, never requested before
        fills, rates = [], []
        for _ in range(5):
            while True:
                c0, r0 = tissue_tiles(top, 1, seen)[0][1:]
                view = [(top, c0 + i, r0 + j) for j in range(5) for i in range(8)]
                if not any(t in seen for t in view[1:]):
                    seen.update(view)
                    break
            clients = [Client("127.0.0.1", port) for _ in range(args.parallel)]
            start = time.perf_counter()
            jobs = [(clients[i], view[i::args.parallel]) for i in range(args.parallel)]
            with ThreadPoolExecutor(args.parallel) as pool:
                list(pool.map(lambda job: [job[0].get(f"/tiles/{key}/slide_files/{lv}/{c}_{r}.jpeg")
                                           for lv, c, r in job[1]], jobs))
            fills.append(time.perf_counter() - start)
            rates.append(len(view) / fills[-1])
    finally:
        server.terminate()
        server.wait(timeout=30)

    report = {"side": args.side, "slide_mb": round(slide.stat().st_size / 2**20), "cold": _stats(cold),
              "cached": _stats(cached), "mask_cold": _stats(mask),
              "viewport_fill_ms": round(statistics.median(fills) * 1000, 1),
              "viewport_tiles_per_s": round(statistics.median(rates), 1), "parallel": args.parallel}
    print(f"{args.side}×{args.side} px slide, {report['slide_mb']} MB; Deep Zoom tiles {DZ_TILE}+2 px over loopback")
    for name in ("cold", "cached", "mask_cold"):
        s = report[name]
        print(f"  {name:10s} median {s['median_ms']:7.2f} ms   p95 {s['p95_ms']:7.2f} ms   ({s['n']} tiles)")
    print(f"  1920×1080 view (40 tiles, {args.parallel} connections, cold): {report['viewport_fill_ms']} ms "
          f"({report['viewport_tiles_per_s']} tiles/s)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
