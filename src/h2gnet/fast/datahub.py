"""Get a preset's published model files: pyFAST's data hub, FAST's storage folder, or a folder the user names.

``h2gnet fetch-models h2gnet-2022`` tries, in order: the folder given with ``--from``; FAST's
storage folder, where FastPathology or pyFAST put data-hub items before
(``DataHub().getStorageDirectory()``, by default ``~/FAST/datahub/ITEM``); and, when pyFAST is
installed and downloads are allowed, ``fast.DataHub().download(ITEM)`` (in a child process: pyFAST
initialises OpenCL and Qt when imported). The first source that holds every file wins: the files
are copied into the models folder, each graph is checked against the preset's card, and
``fetched.json`` records the source, the SHA-256 of each file and the licence text (FAST writes the
item's licence as ``LICENSE*`` beside the download), which is also shown.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from h2gnet.errors import H2GNetError
from h2gnet.infer.model_card import load_preset, models_folder
from h2gnet.infer.runtime import OnnxModel, sha256_of
from h2gnet.io.atomic import atomic_path, write_text

FETCHED_FILE = "fetched.json"
LICENCE_FILE = "LICENSE.txt"
#: FAST's data-hub storage folder when pyFAST cannot be asked (FAST 4: ``~/FAST/datahub``).
DEFAULT_FAST_STORAGE = Path("~/FAST/datahub")


@dataclass
class FetchResult:
    """What ``fetch-models`` did: where the files came from, where they are, their SHA-256 and licence."""

    preset: str
    source: str
    folder: str
    files: dict[str, dict[str, str]]
    licence: str = ""
    licence_file: str = ""
    tried: list[str] = field(default_factory=list)
    fetched_at: str = ""


def _find(folder: Path, name: str) -> Path | None:
    """``folder/name``, or the first file of that name below ``folder``."""
    direct = folder / name
    if direct.is_file():
        return direct
    return next((p for p in sorted(folder.rglob(name)) if p.is_file()), None) if folder.is_dir() else None


def _licence(folder: Path, files: list[Path]) -> tuple[str, str]:
    """(text, path) of the licence beside the files (``LICENSE*``/``LICENCE*``), from the files' folders up to
    ``folder``; empty when none."""
    seen: list[Path] = []
    for f in files:
        d = f.parent
        while True:
            if d not in seen:
                seen.append(d)
            if d == folder or folder not in d.parents:
                break
            d = d.parent
    for d in seen:
        for pattern in ("LICENSE*", "LICENCE*", "license*"):
            for p in sorted(d.glob(pattern)):
                if p.is_file():
                    return p.read_text(encoding="utf-8", errors="replace").strip(), str(p)
    return "", ""


def _ask_fast(item: str, *, download: bool, timeout: float) -> tuple[Path | None, str]:
    """(pyFAST's storage folder of ``item``, a note on what happened), asking pyFAST in a child process."""
    code = ("import sys, fast\n"
            "fast.Reporter.setGlobalReportMethod(fast.Reporter.NONE)\n"
            "hub = fast.DataHub()\n"
            "print('STORAGE=' + hub.getStorageDirectory(), flush=True)\n"
            f"if {download!r}:\n"
            f"    hub.download({item!r})\n"
            "    print('DOWNLOADED', flush=True)\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return None, f"pyFAST's data hub did not answer within {timeout:.0f} s"
    storage = next((ln[len("STORAGE="):] for ln in proc.stdout.splitlines() if ln.startswith("STORAGE=")), None)
    folder = Path(storage) / item if storage else None
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["no message"])[-1][:200]
        what = "pyFAST is not installed" if "No module named 'fast'" in proc.stderr else \
            f"pyFAST's data hub download failed ({err})"
        return folder, what
    return folder, "downloaded with pyFAST's data hub" if download else "pyFAST's storage folder"


def fetch_models(preset_name: str, models_dir: str | Path | None = None, source: str | Path | None = None, *,
                 download: bool = True, fast_storage: str | Path | None = None,
                 timeout: float = 600.0) -> FetchResult:
    """Get ``preset_name``'s files into ``models_dir`` (default: :func:`models_folder`), verified.

    ``source``: a folder holding the files (searched recursively); ``download``: allow pyFAST's data hub
    (needs pyFAST and internet); ``fast_storage``: FAST's data-hub folder (default: asked from pyFAST, else
    ``~/FAST/datahub``). Raises :class:`H2GNetError` saying what was tried and what to do when no source
    holds the files, or when a file does not match its card.
    """
    preset = load_preset(preset_name)
    item = preset.datahub.get("model_item", "")
    target = models_folder(preset_name, models_dir)
    tried: list[str] = []
    candidates: list[tuple[Path, str]] = []
    if source is not None:
        candidates.append((Path(source).expanduser(), f"the folder {source}"))
    else:
        storages = [Path(fast_storage).expanduser()] if fast_storage is not None else []
        asked = None
        if fast_storage is None:
            asked, note = _ask_fast(item, download=False, timeout=timeout)
            if asked is not None:
                storages.append(asked.parent)
            else:
                tried.append(note)
            storages.append(DEFAULT_FAST_STORAGE.expanduser())
        for s in dict.fromkeys(Path(os.path.normpath(s)) for s in storages):
            candidates.append((s / item, f"FAST's storage folder {s / item}"))
    chosen: tuple[Path, str, dict[str, Path]] | None = None
    for folder, label in candidates:
        found = {kind: _find(folder, name) for kind, name in preset.files.items()}
        if all(found.values()):
            chosen = (folder, label, {k: v for k, v in found.items() if v is not None})
            break
        missing = [preset.files[k] for k, v in found.items() if v is None]
        tried.append(f"{label}: {'missing ' + ', '.join(missing) if folder.is_dir() else 'no such folder'}")
    if chosen is None and source is None and download:
        hub, note = _ask_fast(item, download=True, timeout=timeout)
        if hub is not None and note.startswith("downloaded"):
            found = {kind: _find(hub, name) for kind, name in preset.files.items()}
            if all(found.values()):
                chosen = (hub, note, {k: v for k, v in found.items() if v is not None})
            else:
                tried.append(f"{note} into {hub}, but the files are not there")
        else:
            tried.append(note)
    if chosen is None:
        raise H2GNetError(None, f"could not get the {preset_name} models ({'; '.join(tried)}). Do one of: run "
                                f"`h2gnet fetch-models {preset_name}` where pyFAST is installed and online "
                                f"(pip install pyfast); copy FAST's data-hub item {item!r} (folder "
                                f"~/FAST/datahub/{item} of a machine where FastPathology ran it) here and give "
                                f"it with --from FOLDER; or download the item from FAST's data hub by hand and "
                                f"give its folder with --from")
    folder, label, files = chosen
    for kind, path in files.items():  # verify before copying anything
        OnnxModel(path, kind, threads=1, card=preset.cards[kind])
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise H2GNetError(target, f"cannot create the models folder ({exc.strerror or exc})") from None
    record: dict[str, dict[str, str]] = {}
    for kind, path in files.items():
        dest = target / preset.files[kind]
        if path.resolve() != dest.resolve():
            with atomic_path(dest) as tmp:
                shutil.copyfile(path, tmp)
        record[kind] = {"file": dest.name, "sha256": sha256_of(dest), "from": str(path)}
    licence, licence_file = _licence(folder, list(files.values()))
    if licence:
        write_text(target / LICENCE_FILE, licence + "\n")
    result = FetchResult(preset_name, label, str(target), record, licence, licence_file, tried,
                         time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_text(target / FETCHED_FILE, json.dumps(asdict(result), indent=2))
    return result
