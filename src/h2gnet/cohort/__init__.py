"""Running one task per slide over a cohort: in this process, or on a Dask cluster (``[dask]`` extra)."""

from h2gnet.cohort.engine import Engine, EngineConfig, SlideTask, slide_threads
from h2gnet.cohort.status import StatusTable, read_status

__all__ = ["Engine", "EngineConfig", "SlideTask", "StatusTable", "read_status", "slide_threads"]
