"""The shared first-page TIFF reader: pixels, tags, description, and one clear error for a bad file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from h2gnet.errors import H2GNetError
from h2gnet.io.tiff import read_tiff_page


def test_reads_pixels_tags_and_description(tmp_path) -> None:
    path = tmp_path / "a.tiff"
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    tifffile.imwrite(path, arr, description=json.dumps({"k": 1}), resolution=(1e4, 1e4),
                     resolutionunit="CENTIMETER", metadata=None)
    page = read_tiff_page(path, "the test array", 1, "bad ({error})", tags=("XResolution", "ResolutionUnit"),
                          description=json.loads)
    assert np.array_equal(page.array, arr) and page.description == {"k": 1}
    assert page.tags["XResolution"][0] / page.tags["XResolution"][1] == pytest.approx(1e4)
    assert int(page.tags["ResolutionUnit"]) == 3


@pytest.mark.parametrize("content", [b"II*\x00bad", b"not a tiff at all", b""])
def test_a_corrupt_file_is_one_error_naming_it(tmp_path, content: bytes) -> None:
    path = tmp_path / "corrupt.tiff"
    path.write_bytes(content)
    with pytest.raises(H2GNetError) as info:
        read_tiff_page(path, "the test array", 1, "cannot be read ({error}): {detail}")
    assert info.value.path == str(path) and str(info.value).startswith(f"{path}: cannot be read (")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_missing_tag_or_bad_description_is_the_same_error(tmp_path) -> None:
    path = tmp_path / "plain.tiff"
    tifffile.imwrite(path, np.zeros((2, 2), np.uint8), description="not json", metadata=None)
    with pytest.raises(H2GNetError, match="unreadable .JSONDecodeError."):
        read_tiff_page(path, "x", 1, "unreadable ({error})", description=json.loads)
    with pytest.raises(H2GNetError, match="unreadable .KeyError."):
        read_tiff_page(path, "x", 1, "unreadable ({error})", tags=("NoSuchTag",))


def test_an_oversized_page_is_refused_before_its_pixels(tmp_path, monkeypatch) -> None:
    path = tmp_path / "big.tiff"
    tifffile.imwrite(path, np.zeros((100, 100), np.uint8), metadata=None)
    monkeypatch.setenv("H2GNET_MAX_CANVAS_GB", "1e-6")  # 1000 bytes
    with pytest.raises(H2GNetError, match="the test array would be a 100×100 px array"):
        read_tiff_page(path, "the test array", 1, "unreadable ({error})")
