"""Operator state that outlives a process and may be shared by nodes: pauses, the suppression
list, automation's suspensions and warm-up day counts (see docs/architecture.rst).

* :mod:`~mqtwisted.state.pauses` and :mod:`~mqtwisted.state.suppression`: the models and the
  narrow ``add``/``list``/``remove`` interface the CLI (and a REST API) call;
* :mod:`~mqtwisted.state.backend`: the blocking backend protocol;
* :mod:`~mqtwisted.state.sqlite`: the backend in the data directory (one machine);
* :mod:`~mqtwisted.state.redis`: the backend in Redis (``--state redis://``, several nodes);
* :mod:`~mqtwisted.state.keeper`: what a delivery process runs: loads, polls and writes back;
* :mod:`~mqtwisted.state.opening`: the backend, keeper and store ``--state`` names;
* :mod:`~mqtwisted.state.redisstore`: connection slots and rates shared through Redis.
"""
