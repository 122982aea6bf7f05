from __future__ import annotations

from pathlib import Path

import pytest

from h2gnet.errors import H2GNetError
from h2gnet.io.manifest import SlideEntry, read_manifest, write_manifest


def _files(tmp_path: Path, *names: str) -> None:
    for n in names:
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / n).write_bytes(b"x")


def test_roundtrip_relative_paths(tmp_path: Path) -> None:
    _files(tmp_path, "s/a.tiff", "s/b.tiff", "ann/a.geojson")
    (tmp_path / "m.csv").write_text("slide,annotation,grade,split\ns/a.tiff,ann/a.geojson,2,train\ns/b.tiff,,,test\n")
    entries = read_manifest(tmp_path / "m.csv")
    assert entries[0].slide == (tmp_path / "s/a.tiff").resolve() and entries[0].grade == 2
    assert entries[1].annotation is None and entries[1].grade is None and entries[1].split == "test"
    write_manifest(tmp_path / "copy.csv", entries)
    assert read_manifest(tmp_path / "copy.csv") == entries
    assert "s/a.tiff" in (tmp_path / "copy.csv").read_text()


@pytest.mark.parametrize("body,problem", [
    ("slide,grade,split\na.tiff,1,train\n", "missing column"),
    ("slide,annotation,grade,split\na.tiff,,4,train\n", "grade"),
    ("slide,annotation,grade,split\na.tiff,,1,training\n", "split"),
    ("slide,annotation,grade,split\na.tiff,,1,train\na.tiff,,2,test\n", "more than once"),
    ("slide,annotation,grade,split\nmissing.tiff,,1,train\n", "do not exist"),
    ("slide,annotation,grade,split\n", "no slides"),
])
def test_bad_manifests(tmp_path: Path, body: str, problem: str) -> None:
    _files(tmp_path, "a.tiff")
    (tmp_path / "m.csv").write_text(body)
    with pytest.raises(H2GNetError, match=problem) as err:
        read_manifest(tmp_path / "m.csv")
    assert "m.csv" in str(err.value)


def test_error_names_line(tmp_path: Path) -> None:
    _files(tmp_path, "a.tiff", "b.tiff")
    (tmp_path / "m.csv").write_text("slide,annotation,grade,split\na.tiff,,1,train\nb.tiff,,x,val\n")
    with pytest.raises(H2GNetError, match="line 3"):
        read_manifest(tmp_path / "m.csv")


def test_entry_key() -> None:
    assert SlideEntry(Path("/x/slide-01.tiff"), None, None, "train").key == "slide-01"
