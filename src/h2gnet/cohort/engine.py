"""One task per slide, run in this process (default) or on a ``dask.distributed`` cluster.

A task is a module-level function ``fn(cache, *args) -> (status, value)``: ``status`` is "done" (or
"skipped"), ``value`` what the caller collects (a summary, a table row). A task raises
:class:`H2GNetError` for a slide that cannot be done; the slide is then "failed" with that message and the
others go on (any other exception too: in-process at once, on Dask after ``retries`` attempts).
``cache`` is a dict that lives as long as the worker process (in-process: as long as the engine): tasks
keep loaded models there, keyed by model path and SHA-256, so a worker loads each model once.

On Dask (``EngineConfig.workers`` or ``.scheduler``) tasks are mapped with ``pure=False`` and ``retries``;
the client follows them with ``as_completed``, shows one progress bar over slides and records each slide in
the status table as it ends. A task whose worker dies (``KilledWorker``: out of memory, a crashing decoder)
is recorded as failed with that reason. Tasks are idempotent: outputs are written under temporary names
and renamed, temporary files a killed attempt left are removed before a slide is redone, and a task finds
a slide finished by an earlier attempt done. Workers must see the output folder at the same path (a shared
filesystem); :meth:`Engine.check_output_folder` proves it before any work.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from h2gnet.errors import H2GNetError
from h2gnet.io.atomic import remove_stale_parts
from h2gnet.params import Rule, check_fields, param

#: Name of the worker plugin that holds each Dask worker's cache (loaded models).
CACHE_PLUGIN = "h2gnet-cache"

TaskFn = Callable[..., tuple[str, Any]]


def visible_cores() -> int:
    """CPU cores this process may run on (its affinity mask; SLURM and cgroups set it)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


@dataclass
class EngineConfig:
    """Where a cohort's slides run.

    ``workers`` 0: in this process, one slide after another (default). ``workers`` N ≥ 1: a Dask
    ``LocalCluster`` of N worker processes on 127.0.0.1 (no dashboard), each running one slide at a time
    with ``cores // N`` compute threads (ONNX Runtime's intra-op threads), so workers × threads = cores.
    ``scheduler``: the address of an existing Dask scheduler (``tcp://host:8786``), e.g. from ``dask-jobqueue``.
    ``retries``: extra attempts of a slide whose task raised an unexpected error or lost its worker.
    ``cores``: cores to share among the LocalCluster's workers (default: the visible cores).
    ``connect_timeout``: seconds to wait for the scheduler.
    """

    workers: int = param(0, Rule(int, low=0, high=4096, help=(
        "start a local Dask cluster of N worker processes (127.0.0.1), cores/N threads each; "
        "0: one slide after another in this process")))
    scheduler: str | None = None
    retries: int = param(1, Rule(int, low=0, high=100,
                                 help="extra attempts of a slide whose task crashed or lost its worker"))
    cores: int | None = param(None, Rule(int, low=1, optional=True, help="cores to share among local workers"))
    connect_timeout: float = param(10.0, Rule(float, low=0, high=86_400, low_open=True, unit="s",
                                              help="seconds to wait for --scheduler"))

    def __post_init__(self) -> None:
        check_fields(self)
        if self.workers and self.scheduler:
            raise H2GNetError(None, "give either --workers N (a local cluster) or --scheduler ADDRESS, not both")

    @property
    def distributed(self) -> bool:
        """True when the slides run on Dask (``workers`` or ``scheduler`` given)."""
        return bool(self.workers or self.scheduler)


@dataclass(frozen=True)
class SlideTask:
    """One slide's task: ``key`` names the slide in the status table and the returned outcomes; ``args``
    follow the cache in the task function's call (picklable); ``outputs``: the files the task writes
    (their folder must exist where the task runs; temporary files a killed attempt left are removed)."""

    key: str
    args: tuple
    outputs: tuple[str, ...] = ()


@dataclass
class Outcome:
    """How a slide's task ended: ``status`` done / skipped / failed, wall ``seconds``, ``error`` message."""

    key: str
    status: str
    seconds: float = 0.0
    error: str = ""
    value: Any = None


def slide_threads() -> int | None:
    """Compute threads for one slide where this runs: None outside a Dask worker (the caller's default);
    on a worker of ``--workers N`` the local cluster's cores / N; on other workers ``cores // threads``
    (a worker with T threads runs T slides at once)."""
    if "distributed" not in sys.modules:  # a Dask worker has imported it; don't pay the import elsewhere
        return None
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return None
    plugin = worker.plugins.get(CACHE_PLUGIN)
    threads = getattr(plugin, "threads", None)
    if threads:
        return int(threads)
    return max(1, visible_cores() // max(1, int(worker.state.nthreads)))


def _execute(fn: TaskFn, task: SlideTask, cache: dict, *, catch_all: bool = True) -> Outcome:
    t = time.perf_counter()
    try:
        for out in task.outputs:
            if not Path(out).parent.is_dir():
                raise H2GNetError(Path(out).parent, f"does not exist on {socket.gethostname()}: the output "
                                                    "folder must be on a filesystem every worker sees")
        remove_stale_parts(task.outputs)
        status, value = fn(cache, *task.args)
    except H2GNetError as exc:
        return Outcome(task.key, "failed", time.perf_counter() - t, str(exc))
    except Exception as exc:
        if catch_all:  # in-process: any error of one slide is that slide's failure
            return Outcome(task.key, "failed", time.perf_counter() - t, _failure(exc))
        raise  # on Dask: the scheduler retries the task, then the client records the failure
    return Outcome(task.key, status, time.perf_counter() - t, "", value)


def _execute_on_worker(fn: TaskFn, task: SlideTask) -> Outcome:
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins.get(CACHE_PLUGIN)
    cache = getattr(plugin, "cache", None)
    if cache is None:  # the plugin was not registered on this worker: a cache on the worker object
        cache = worker.__dict__.setdefault("_h2gnet_cache", {})
    return _execute(fn, task, cache, catch_all=False)


def _probe_folder(folder: str, probe: str) -> str | None:
    """On a worker: None when ``folder`` is the client's (it holds the client's ``probe`` file) and
    writable here; else what is wrong."""
    path = Path(folder)
    host = socket.gethostname()
    if not (path / probe).exists():
        return f"{host} does not see it (no shared filesystem at this path?)"
    test = path / f".h2gnet-write-test-{secrets.token_hex(6)}"
    try:
        test.write_bytes(b"")
        test.unlink()
    except OSError as exc:
        return f"{host} cannot write it ({exc.strerror or exc})"
    return None


def _restore_malloc_thresholds() -> None:
    """Undo, in a worker process, the ``MALLOC_TRIM_THRESHOLD_`` Dask's nanny sets by default: a fixed trim
    threshold turns off glibc's dynamic mmap threshold, so every patch batch (~12 MB) is a fresh mmap that
    page-faults (a batch-building loop: 17 s with the fixed thresholds below, 49 s with the nanny's, 19 s
    with glibc's defaults). No-op elsewhere (other C libraries, or the variable unset)."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD: keep up to 128 MiB of freed heap
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks under 32 MiB come from the heap
    except (OSError, AttributeError):
        return


def _cache_plugin(threads: int | None) -> Any:
    from distributed import WorkerPlugin

    class SlideCache(WorkerPlugin):
        """A dict per worker process for tasks' loaded models; ``threads``: compute threads per slide."""

        name = CACHE_PLUGIN

        def __init__(self, threads: int | None) -> None:
            self.threads = threads

        def setup(self, worker: Any) -> None:
            self.cache: dict = {}
            _restore_malloc_thresholds()

    return SlideCache(threads)


@dataclass
class Engine:
    """Runs slide tasks as :class:`EngineConfig` says; a context manager that starts and always stops the
    local cluster (or the connection to an existing one)."""

    config: EngineConfig = field(default_factory=EngineConfig)
    cache: dict = field(default_factory=dict)
    client: Any = field(default=None, init=False, repr=False)
    _cluster: Any = field(default=None, init=False, repr=False)

    def __enter__(self) -> Self:
        if self.config.distributed:
            self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def _start(self) -> None:
        try:
            import dask
            from distributed import Client, LocalCluster
        except ImportError:
            raise H2GNetError(None, "running on Dask needs `pip install h2gnet[dask]` (dask[distributed])") from None
        cfg = self.config
        threads = None
        if cfg.workers:
            # one slide at a time per worker (one Dask thread, and no task queued on a worker: a worker that
            # dies takes no waiting slide with it), cores / N compute threads for it
            threads = max(1, (cfg.cores or visible_cores()) // cfg.workers)
            # Dask's nanny would set MALLOC_TRIM_THRESHOLD_ (and OMP/MKL/OpenBLAS threads 1) in its workers: the
            # fixed trim threshold turns off glibc's dynamic mmap threshold, so every patch batch (~12 MB) is a
            # fresh mmap and page faults (building batches: 20 s vs 7 s in a micro-benchmark); workers here
            # keep this process's environment, as the in-process run
            with dask.config.set({"distributed.scheduler.worker-saturation": 1.0,
                                  "distributed.nanny.pre-spawn-environ": {}}):
                # loopback only: the scheduler's and workers' HTTP servers (health, metrics) on 127.0.0.1,
                # no scheduler dashboard
                self._cluster = LocalCluster(n_workers=cfg.workers, threads_per_worker=1, processes=True,
                                             host="127.0.0.1", dashboard_address=None,
                                             scheduler_kwargs={"dashboard": False,
                                                               "dashboard_address": "127.0.0.1:0"},
                                             worker_dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
            self.client = Client(self._cluster)
        else:
            address = str(cfg.scheduler)
            try:
                self.client = Client(address, timeout=cfg.connect_timeout)
            except (OSError, TimeoutError, ValueError) as exc:
                detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                raise H2GNetError(address, f"cannot reach the Dask scheduler within {cfg.connect_timeout:g} s "
                                           f"({detail})") from None
        self.client.register_plugin(_cache_plugin(threads), name=CACHE_PLUGIN)

    def close(self) -> None:
        """Stop the client and the local cluster (idempotent)."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    @property
    def distributed(self) -> bool:
        """True while a Dask client is connected (tasks run on workers, paths must be absolute)."""
        return self.client is not None

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> process id (Dask only)."""
        return dict(self.client.run(os.getpid)) if self.client is not None else {}

    # -- work --------------------------------------------------------------------------------------------
    def check_output_folder(self, folder: str | Path) -> None:
        """On Dask: every connected worker sees ``folder`` (the client's, shared) and can write it."""
        if self.client is None:
            return
        folder = Path(folder).resolve()
        probe = f".h2gnet-probe-{secrets.token_hex(6)}"
        (folder / probe).write_bytes(b"")
        try:
            problems = self.client.run(_probe_folder, str(folder), probe)
        finally:
            (folder / probe).unlink()
        bad = {addr: why for addr, why in problems.items() if why}
        if bad:
            addr, why = next(iter(bad.items()))
            raise H2GNetError(folder, f"the output folder is not usable by {len(bad)} Dask worker(s): worker {addr}: "
                                      f"{why}; every worker must see the output folder at the same path")

    def run(self, fn: TaskFn, tasks: list[SlideTask], desc: str = "slides", *, progress: bool = True,
            on_end: Callable[[Outcome], object] | None = None) -> dict[str, Outcome]:
        """Run ``fn`` on every task; returns key -> :class:`Outcome` (in task order). ``on_end`` is called
        in this process as each slide ends (e.g. to write the status table)."""
        outcomes: dict[str, Outcome] = {}
        with _progress_bar(len(tasks), desc, show=progress and bool(tasks)) as bar:
            for outcome in (self._run_dask(fn, tasks, desc) if self.client is not None else
                            (_execute(fn, t, self.cache) for t in tasks)):
                outcomes[outcome.key] = outcome
                if on_end is not None:
                    on_end(outcome)
                bar.update(1)
        return {t.key: outcomes[t.key] for t in tasks}

    def _run_dask(self, fn: TaskFn, tasks: list[SlideTask], desc: str) -> Iterator[Outcome]:
        from distributed import as_completed

        if not tasks:
            return
        token = secrets.token_hex(4)
        # one task group (its name: the prefix before the hex token): with more slides than twice the
        # workers' threads the scheduler queues them and hands a worker its next slide when it is free
        group = "".join(ch for ch in desc if ch.isalpha()) or "slides"
        keys = [f"h2gnet-{group}-{token}-{i}" for i in range(len(tasks))]
        futures = self.client.map(_execute_on_worker, [fn] * len(tasks), tasks, key=keys, pure=False,
                                  retries=self.config.retries)
        by_future = {f.key: t for f, t in zip(futures, tasks)}
        started = time.perf_counter()
        try:
            for future in as_completed(futures):
                task = by_future[future.key]
                if future.status == "finished":
                    yield future.result()
                else:
                    yield Outcome(task.key, "failed", time.perf_counter() - started, _failure(future.exception()))
                    remove_stale_parts(task.outputs)
                future.release()
        finally:
            self.client.cancel(futures)


class _NoBar:
    """A progress bar that shows nothing (tqdm is not imported for runs without bars)."""

    def update(self, n: int = 1) -> None:
        """Nothing to show."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _progress_bar(total: int, desc: str, *, show: bool) -> Any:
    """A tqdm bar over ``total`` slides, or :class:`_NoBar` when ``show`` is false."""
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="slide")


def _failure(exc: BaseException | None) -> str:
    """A one-line reason for a task that did not return."""
    if type(exc).__name__ == "KilledWorker":  # distributed's; not imported for in-process runs
        return ("its Dask worker died while running it (out of memory, or a crashing slide decoder?); "
                "see the worker logs")
    if isinstance(exc, H2GNetError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory (MemoryError)"
    text = str(exc).splitlines()[0][:300] if exc is not None and str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
