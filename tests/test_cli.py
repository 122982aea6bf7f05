"""The foundation commands end to end: exit codes, messages, outputs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import phantom_image, real_slide, write_pyramid_tiff
from h2gnet.cli import main


def test_tissue_command_writes_mask(tiny_slide, tmp_path: Path, capsys) -> None:
    slide, _, _ = tiny_slide
    assert main(["tissue", str(slide), "-o", str(tmp_path / "m.png")]) == 0
    mask = cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (96, 128) and set(np.unique(mask)) == {0, 255}
    assert "mm²" in capsys.readouterr().out
    assert main(["tissue", str(slide), "--method", "otsu", "-o", str(tmp_path / "o.png")]) == 0


@pytest.mark.parametrize("make,problem", [
    (lambda p: p.write_bytes(b"\x00" * 100), "not a slide"),
    (lambda p: write_pyramid_tiff(p, phantom_image(256, 256)[0], None), "--mpp"),
    (lambda p: write_pyramid_tiff(p, np.full((512, 512, 3), 250, np.uint8), 0.5), "no tissue"),
])
def test_tissue_command_bad_input(tmp_path: Path, capsys, make, problem: str) -> None:
    path = tmp_path / "bad.tiff"
    make(path)
    assert main(["tissue", str(path), "-o", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.tiff" in err and problem in err and "Traceback" not in err
    assert not (tmp_path / "m.png").exists() and not list(tmp_path.glob(".*part*"))


def test_patches_command_reports_failures_and_keeps_going(tiny_slide, tmp_path: Path, capsys) -> None:
    slide, ann, _ = tiny_slide
    broken = tmp_path / "broken.tiff"
    broken.write_bytes(b"II*\x00nonsense")
    outside = tmp_path / "outside.geojson"
    outside.write_text('{"type":"Polygon","coordinates":[[[90000,90000],[91000,90000],[91000,91000],[90000,90000]]]}')
    second = write_pyramid_tiff(tmp_path / "second.tiff", phantom_image(2048, 1536, seed=1)[0], 0.5, (1, 4))
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide,annotation,grade,split\n{slide},{ann},1,train\n{broken},,,test\n"
                        f"{second},{outside},2,val\n")
    assert main(["-q", "patches", str(manifest), "-o", str(tmp_path / "idx")]) == 1
    captured = capsys.readouterr()
    assert "tiny" in captured.out and "TOTAL" in captured.out
    assert "broken.tiff" in captured.err and "outside.geojson" in captured.err and "coordinate frame" in captured.err
    assert (tmp_path / "idx" / "tiny.patches.parquet").exists()
    assert not (tmp_path / "idx" / "second.patches.parquet").exists()


def test_manifest_errors_exit_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "m.csv").write_text("slide,annotation,grade,split\nnothere.tiff,,1,train\n")
    assert main(["patches", str(tmp_path / "m.csv"), "-o", str(tmp_path / "i")]) == 2
    assert "do not exist" in capsys.readouterr().err


def test_real_slides_patch_index(tmp_path: Path, capsys) -> None:
    svs = real_slide("CMU-1-Small-Region.svs")
    tcga = real_slide("tcga-cr-7395-01a-01-ts1.svs")
    dcm = real_slide("CMU-1-Small-Region-dicom/level-0-frames-0-30.dcm")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide,annotation,grade,split,mpp\n{svs},,,test,\n{tcga},,,test,0.25\n{dcm},,,test,\n")
    assert main(["-q", "patches", str(manifest), "-o", str(tmp_path / "idx")]) == 0
    out = capsys.readouterr().out
    from h2gnet.patches.grid import PatchIndex

    a = PatchIndex.load(tmp_path / "idx" / "CMU-1-Small-Region.patches.parquet")
    b = PatchIndex.load(tmp_path / "idx" / "level-0-frames-0-30.patches.parquet")
    assert len(a) > 0 and len(a) == len(b)  # the same tissue in SVS and DICOM gives the same patches
    assert (a.label == -1).all() and "tcga" in out


@pytest.mark.slow
def test_synth_command(tmp_path: Path, capsys) -> None:
    assert main(["-q", "synth", str(tmp_path / "c"), "--slides", "2", "--seed", "1", "--width", "1536",
                 "--height", "1024"]) == 0
    manifest = (tmp_path / "c" / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "slide,annotation,grade,split" and len(manifest) == 3


def test_synth_command_with_alternative_stain_set(tmp_path: Path, capsys) -> None:
    import openslide

    assert main(["-q", "synth", str(tmp_path / "c"), "--slides", "1", "--seed", "2", "--width", "512",
                 "--height", "512", "--mpp", "0.4", "--stain-set", "alternative"]) == 0
    assert "alternative stains" in capsys.readouterr().out
    slide = openslide.OpenSlide(tmp_path / "c" / "slides" / "phantom_000.tiff")
    assert "stain_set=alternative" in slide.properties["tiff.ImageDescription"]
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.4)
    assert len((tmp_path / "c" / "manifest.csv").read_text().splitlines()) == 2
