"""Patch-classifier training on 1 vs 2 processes (torchrun, DDP with gloo on CPU): steps/s and samples/s.

Usage:
    python benchmarks/train_ddp.py [--steps 20] [--batch-size 16] [--input-size 128] [--cache .bench-ddp]

Makes once (cached under --cache): a phantom cohort of 6 small slides and its patch index. Then runs
``torchrun --nproc-per-node N -m h2gnet train-patch`` for N = 1 and 2 with ``--threads cores/N`` (so
processes × threads = cores) and DataLoader ``--workers 0`` (patches read by the training processes,
which keeps the process count at N), 2 epochs of ``--steps`` steps, in the order 1, 2, 2, 1 (a drifting
load weighs on both alike). Figures come from the second epoch of each run (the first warms up): a step
of N processes trains on ``batch-size × N`` patches (the global batch), so samples/s = batch × N /
seconds per step. The last line is a JSON object with all figures. Note the machine's load (printed).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def make_cohort(cache: Path) -> tuple[Path, Path]:
    """A 6-slide phantom cohort (6000 × 4500 px at 0.5 µm/px) and its patch index, made once."""
    from h2gnet.io.manifest import read_manifest
    from h2gnet.patches.grid import index_cohort
    from h2gnet.synth import CohortConfig
    from h2gnet.synth import make_cohort as synth

    manifest = synth(cache / "cohort", CohortConfig(slides=6, seed=5, width=6000, height=4500, mpp=0.5,
                                                    val_fraction=0.2, test_fraction=0.2), progress=False)
    index = cache / "index"
    if not index.exists():
        index_cohort(read_manifest(manifest), index, progress=False)
    return manifest, index


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(procs: int, cores: int, manifest: Path, index: Path, out: Path, args: argparse.Namespace) -> dict:
    """One torchrun training; returns the second epoch's seconds per step, steps/s and samples/s."""
    shutil.rmtree(out, ignore_errors=True)
    threads = max(1, cores // procs)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr",
           "127.0.0.1", "--master-port", str(_free_port()), "-m", "h2gnet", "-q", "train-patch", str(manifest),
           "--index", str(index), "-o", str(out), "--epochs", "2", "--steps", str(args.steps), "--val-steps", "2",
           "--batch-size", str(args.batch_size), "--input-size", str(args.input_size), "--workers", "0",
           "--threads", str(threads), "--no-augment"]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rows = list(csv.DictReader(io.StringIO((out / "log.csv").read_text())))
    per_step = float(rows[-1]["seconds_per_step"])
    return {"processes": procs, "threads": threads, "seconds_per_step": per_step,
            "steps_per_s": round(1 / per_step, 3), "samples_per_s": round(args.batch_size * procs / per_step, 2),
            "wall_s": round(wall, 1), "load": round(os.getloadavg()[0], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="training steps per epoch")
    p.add_argument("--batch-size", type=int, default=16, help="patches per process and step")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--cache", type=Path, default=Path(".bench-ddp"))
    args = p.parse_args()

    from h2gnet.cohort.engine import visible_cores

    args.cache.mkdir(parents=True, exist_ok=True)
    manifest, index = make_cohort(args.cache)
    cores = visible_cores()
    print(f"MobileNetV2, {args.input_size}-px patches, batch {args.batch_size} per process, {cores} cores, "
          f"load before: {os.getloadavg()[0]:.2f}")
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for procs in (1, 2, 2, 1):
        r = run(procs, cores, manifest, index, args.cache / f"run-{procs}", args)
        runs[procs].append(r)
        print(f"{procs} process(es) x {r['threads']} thread(s): {r['steps_per_s']:.3f} steps/s, "
              f"{r['samples_per_s']:.1f} samples/s (wall {r['wall_s']:.0f} s, load {r['load']:.2f})", flush=True)
    summary = {}
    for procs, pair in runs.items():
        per_step = sum(r["seconds_per_step"] for r in pair) / len(pair)
        summary[procs] = {"steps_per_s": round(1 / per_step, 3),
                          "samples_per_s": round(args.batch_size * procs / per_step, 2)}
    ratio = summary[2]["samples_per_s"] / summary[1]["samples_per_s"]
    print(f"2 processes vs 1: x{ratio:.3f} samples/s, x{summary[2]['steps_per_s'] / summary[1]['steps_per_s']:.3f} "
          f"steps/s (each step of 2 processes trains on twice the patches)")
    print(json.dumps({"cores": cores, "batch_size": args.batch_size, "input_size": args.input_size,
                      "summary": summary, "samples_ratio_2_vs_1": round(ratio, 3), "runs": runs}))


if __name__ == "__main__":
    main()
