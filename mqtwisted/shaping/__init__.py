"""Traffic shaping: limits per sending IP and destination, sending IPs and pools, warm-up and
reactions to what receivers answer.

* :mod:`~mqtwisted.shaping.config`: the shaping file (TOML, KumoMTA's key names) read and checked;
* :mod:`~mqtwisted.shaping.rates`: rates and the GCRA that spaces events evenly;
* :mod:`~mqtwisted.shaping.store`: where counters live (in memory; the protocol a shared store meets);
* :mod:`~mqtwisted.shaping.sources`: which local address a message is sent from;
* :mod:`~mqtwisted.shaping.warmup`: the daily allowance of a new IP;
* :mod:`~mqtwisted.shaping.automation`: rules matched against replies;
* :mod:`~mqtwisted.shaping.shaper`: the one object delivery asks.
"""

from mqtwisted.shaping.config import (
    Limits,
    ShapingConfig,
    ShapingError,
    load_shaping,
    parse_shaping,
)
from mqtwisted.shaping.rates import Rate
from mqtwisted.shaping.shaper import Fired, Shaper
from mqtwisted.shaping.sources import Source, UnknownPool
from mqtwisted.shaping.store import MemoryStore, Store

__all__ = [
    "Fired", "Limits", "MemoryStore", "Rate", "Shaper", "ShapingConfig", "ShapingError", "Source", "Store",
    "UnknownPool", "load_shaping", "parse_shaping",
]
