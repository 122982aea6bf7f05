"""Cohort manifests: the CSV users describe their slides with.

Columns: ``slide, annotation, grade, split`` (required, in any order), and
optionally ``mpp`` (level-0 µm/px, for slides without it in their metadata)
``annotation_downsample`` (for mask-image annotations; default 4, > 0) and
``tumour_free`` (yes/no: the slide has no tumour, so an annotation without any
polygon is expected rather than an error).
Paths are relative to the manifest's folder (absolute paths work too).
``grade`` is 1, 2, 3 or empty; ``split`` is train, val or test;
``annotation`` may be empty (no ground truth: segmentation only).
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from h2gnet.errors import H2GNetError
from h2gnet.io.atomic import write_text

REQUIRED_COLUMNS = ("slide", "annotation", "grade", "split")
SPLITS = ("train", "val", "test")
GRADES = (1, 2, 3)
TRUE_WORDS = ("yes", "true", "1", "y")
FALSE_WORDS = ("no", "false", "0", "n", "")


@dataclass(frozen=True)
class SlideEntry:
    """One manifest row, paths resolved."""

    slide: Path
    annotation: Path | None
    grade: int | None
    split: str
    mpp: float | None = None
    annotation_downsample: float = 4.0
    tumour_free: bool = False

    @property
    def key(self) -> str:
        """A file-name-safe identifier: the slide's file stem."""
        return self.slide.stem


def _parse_row(row: dict[str, str], base: Path, path: Path, line: int) -> SlideEntry:
    def where(msg: str) -> H2GNetError:
        return H2GNetError(path, f"line {line}: {msg}")

    slide_raw = (row.get("slide") or "").strip()
    if not slide_raw:
        raise where("empty 'slide'")
    ann_raw = (row.get("annotation") or "").strip()
    grade_raw = (row.get("grade") or "").strip()
    split = (row.get("split") or "").strip().lower()
    grade: int | None = None
    if grade_raw:
        try:
            value = float(grade_raw)
        except ValueError:
            raise where(f"grade {grade_raw!r} is not 1, 2, 3 or empty") from None
        if value not in GRADES:  # 2.7 is not grade 2
            raise where(f"grade {grade_raw!r} is not 1, 2, 3 or empty")
        grade = int(value)
    if split not in SPLITS:
        raise where(f"split {split!r} is not one of {', '.join(SPLITS)}")
    mpp = None
    mpp_raw = (row.get("mpp") or "").strip()
    if mpp_raw:
        try:
            mpp = float(mpp_raw)
        except ValueError:
            raise where(f"mpp {mpp_raw!r} is not a number") from None
        if not (math.isfinite(mpp) and mpp > 0):
            raise where(f"mpp {mpp_raw!r} is not a positive number of µm per level-0 pixel")
    ds_raw = (row.get("annotation_downsample") or "").strip()
    try:
        downsample = float(ds_raw) if ds_raw else 4.0
    except ValueError:
        raise where(f"annotation_downsample {ds_raw!r} is not a number") from None
    if not (math.isfinite(downsample) and downsample > 0):
        raise where(f"annotation_downsample {ds_raw!r} is not a positive number")
    free_raw = (row.get("tumour_free") or "").strip().lower()
    if free_raw not in TRUE_WORDS + FALSE_WORDS:
        raise where(f"tumour_free {free_raw!r} is not yes, no or empty")
    slide_path = _resolve(base, slide_raw, "slide", where)
    ann_path = _resolve(base, ann_raw, "annotation", where) if ann_raw else None
    return SlideEntry(
        slide=slide_path,
        annotation=ann_path,
        grade=grade,
        split=split,
        mpp=mpp,
        annotation_downsample=downsample,
        tumour_free=free_raw in TRUE_WORDS,
    )


def _resolve(base: Path, raw: str, column: str, where: Callable[[str], H2GNetError]) -> Path:
    """``base / raw`` with its links resolved; a symlink loop is an error naming the column and the file."""
    try:
        return (base / raw).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise where(f"{column} {base / raw}: is a symlink loop (or an unresolvable link); give the file "
                    "itself") from None


def read_manifest(path: str | Path, *, check_files: bool = True) -> list[SlideEntry]:
    """Parse and validate a manifest; one clear error for every kind of problem.

    Checks: required columns, values, duplicate slides, duplicate slide file
    names (outputs are named after them) and, with ``check_files``, that every
    slide and annotation exists (all missing files are listed at once).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise H2GNetError(path, "no such manifest file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise H2GNetError(path, f"cannot be read: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise H2GNetError(path, f"missing column(s) {', '.join(missing)}; "
                                f"a manifest needs {', '.join(REQUIRED_COLUMNS)}")
    reader.fieldnames = columns
    base = path.parent
    entries = [_parse_row(row, base, path, i + 2) for i, row in enumerate(reader)]
    if not entries:
        raise H2GNetError(path, "has no slides")
    dupes = [str(p) for p, n in Counter(e.slide for e in entries).items() if n > 1]
    if dupes:
        raise H2GNetError(path, f"lists the same slide more than once: {', '.join(dupes)}")
    stems = [k for k, n in Counter(e.key for e in entries).items() if n > 1]
    if stems:
        raise H2GNetError(path, f"has several slides named {', '.join(stems)} (outputs are named after the file)")
    if check_files:
        absent = [str(e.slide) for e in entries if not e.slide.exists()]
        absent += [str(e.annotation) for e in entries if e.annotation is not None and not e.annotation.exists()]
        if absent:
            shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
            raise H2GNetError(path, f"{len(absent)} listed file(s) do not exist: {shown}")
    return entries


def write_manifest(path: str | Path, entries: list[SlideEntry]) -> None:
    """Write a manifest with paths relative to its folder (atomically)."""
    path = Path(path)
    base = path.parent.resolve()

    def rel(p: Path | None) -> str:
        if p is None:
            return ""
        try:
            return p.resolve().relative_to(base).as_posix()
        except ValueError:
            return str(p)

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    extra = any(e.mpp is not None for e in entries)
    writer.writerow([*REQUIRED_COLUMNS, *(["mpp"] if extra else [])])
    for e in entries:
        row = [rel(e.slide), rel(e.annotation), "" if e.grade is None else e.grade, e.split]
        writer.writerow(row + ([("" if e.mpp is None else e.mpp)] if extra else []))
    write_text(path, out.getvalue())


def select(entries: list[SlideEntry], splits: str | tuple[str, ...] | None) -> list[SlideEntry]:
    """Entries in the given split(s); all when None."""
    if splits is None:
        return list(entries)
    wanted = (splits,) if isinstance(splits, str) else tuple(splits)
    return [e for e in entries if e.split in wanted]
