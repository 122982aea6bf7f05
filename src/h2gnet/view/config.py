"""How ``h2gnet view`` serves: its address and its tile cache (the CLI's options are built from these fields)."""

from __future__ import annotations

from dataclasses import dataclass

from h2gnet.params import Rule, check_fields, param
from h2gnet.view.tiles import CACHE_MB


@dataclass
class ViewConfig:
    """Address (``host``, ``port``: 0 for any free port) and the tile cache's memory (``cache_mb``, MB)."""

    host: str = param("127.0.0.1", Rule(str, help="address to listen on; the default serves this machine only "
                                                  "(any other warns: there is no login)"))
    port: int = param(8000, Rule(int, low=0, high=65535, help="TCP port (0: any free port)"))
    cache_mb: float = param(float(CACHE_MB), Rule(float, low=1, high=1_000_000, unit="MB",
                                                  help="memory for encoded tiles kept for reuse"))

    def __post_init__(self) -> None:
        check_fields(self)
