"""Ray: the same units on a Ray cluster, one long-lived actor per GPU (or per CPU slot without GPUs).

An actor keeps its process (and CUDA context, and imported torch) across the units it is given,
so a unit costs one Ray call, not one process start. Units are dealt round-robin over the actors
and each actor runs its share in order; a unit's error is collected, not raised, so every other
unit still runs and ``gather`` names what did not finish. Actors restart when their node dies
(``max_restarts``) and Ray retries the interrupted call, which resumes the unit from what is durable.
An extract unit's images are decoded by Ray CPU tasks (``decode_cpus`` each, a few batches in
flight per actor, in order), so decoding spreads over the cluster's CPUs while the actor's GPU
runs the forward; with ``decode_cpus=0`` the actor decodes in its own DataLoader workers.
"""

from __future__ import annotations

import functools
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epcache.extract.stages import make_loader
from epcache.launch.execute import run_unit

__all__ = ["RayOptions", "run_on_ray"]


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: join the cluster of RAY_ADDRESS, else start a local one
    gpus_per_actor: float = 1.0  # 0: CPU actors
    cpus_per_actor: float = 1.0
    actors: int | None = None  # None: as many as the cluster's GPUs (CPUs without GPUs) allow
    max_restarts: int = 3
    decode_cpus: float = 1.0  # per decode task of an extract unit; 0: decode inside the actor
    decode_window: int = 4  # decoded batches in flight per actor


class _UnitActor:
    """One worker process; runs the units it is handed, one at a time."""

    def __init__(self, decode_cpus: float, decode_window: int) -> None:
        self.decode_cpus = decode_cpus
        self.decode_window = decode_window

    def run(self, run_dir: str, unit_id: str) -> str:
        if self.decode_cpus <= 0:
            return run_unit(run_dir, unit_id)
        source = functools.partial(ray_batches, window=self.decode_window, num_cpus=self.decode_cpus)
        return run_unit(run_dir, unit_id, batch_source=source)


def ray_batches(dataset: Any, batches: list[list[int]], *, window: int, num_cpus: float) -> Iterator[Any]:
    """The decoded ``Batch`` of each index list, decoded by Ray tasks, ``window`` in flight, in order."""
    import ray

    decode = ray.remote(num_cpus=num_cpus)(_decode_batch)
    source = ray.put(dataset)  # shipped once, not once per task
    pending: deque[Any] = deque()
    todo = iter(batches)
    for indices in itertools.islice(todo, max(1, window)):
        pending.append(decode.remote(source, indices))
    while pending:
        ref = pending.popleft()
        nxt = next(todo, None)
        if nxt is not None:
            pending.append(decode.remote(source, nxt))
        yield ray.get(ref)


def _decode_batch(dataset: Any, indices: list[int]) -> Any:
    """One batch, decoded exactly as a DataLoader worker decodes it (same dataset, same collation)."""
    return next(iter(make_loader(dataset, [indices], workers=0, pin_memory=False)))


def run_on_ray(run_dir: Path, unit_ids: list[str], options: RayOptions) -> dict[str, str]:
    """Run the units on Ray; returns each unit's outcome, or ``"failed: <error>"``.

    Joins (or starts) Ray only when this process has not initialised it already, and shuts down
    only what it started.
    """
    import ray

    owned = not ray.is_initialized()
    if owned:
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False)
    try:
        resources = ray.cluster_resources()
        per = options.gpus_per_actor if options.gpus_per_actor > 0 else options.cpus_per_actor
        have = resources.get("GPU" if options.gpus_per_actor > 0 else "CPU", 0.0)
        spare = options.decode_cpus if options.gpus_per_actor <= 0 else 0.0  # CPU actors leave room to decode
        n = options.actors or max(1, int((have - spare) // per))
        n = max(1, min(n, len(unit_ids)))
        cls: Any = ray.remote(_UnitActor)
        actors = [
            cls.options(num_gpus=options.gpus_per_actor, num_cpus=options.cpus_per_actor,
                        max_restarts=options.max_restarts, max_task_retries=options.max_restarts,
                        ).remote(options.decode_cpus, options.decode_window)
            for _ in range(n)
        ]
        refs = {u: actors[i % n].run.remote(str(run_dir), u) for i, u in enumerate(unit_ids)}
        out: dict[str, str] = {}
        for unit, ref in refs.items():
            try:
                out[unit] = ray.get(ref)
            except Exception as e:
                out[unit] = f"failed: {_cause(e)}"
        for a in actors:
            ray.kill(a)
        return out
    finally:
        if owned:
            ray.shutdown()


def _cause(e: BaseException) -> str:
    """The task's own error, without Ray's wrapper and traceback."""
    inner = getattr(e, "cause", None)
    return f"{type(inner).__name__}: {inner}" if inner is not None else f"{type(e).__name__}: {e}"
