"""From a validated MicrotaskJob to what the local executor runs.

The local executor has one pool, this machine's CPUs: `gpu` and `auto` jobs run there too (a note
says so), and the window of shards in flight is capped by the number of local workers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from microtask_runner.indexset import IndexSet

from ..api.convert import to_core_spec
from ..api.items import runner_items
from ..api.model import MicrotaskJob
from ..core.types import Accelerator
from .executor import LocalJob


def local_job(
    job: MicrotaskJob,
    workers: int,
    workdir: Path,
    scratch: Path,
    config_map_data: Mapping[str, str] | None = None,
    *,
    universe: IndexSet | None = None,
) -> tuple[LocalJob, list[str]]:
    """The LocalJob and notes for the person running it.

    `scratch` is a folder for the items file of a ConfigMap source; `universe`, when given, is the
    part of the job to run (a resumed run, a rerun of failures), with the job's own indexes.
    """
    notes: list[str] = []
    spec = job.spec
    core = to_core_spec(job, config_map_data, universe=universe)
    if core.accelerator != Accelerator.CPU:
        notes.append(
            f"placement.accelerator is {core.accelerator.value}: there is no GPU pool locally, "
            "so every shard runs on this machine's CPUs"
        )
        core = replace(core, accelerator=Accelerator.CPU)
    if core.parallelism > workers:
        notes.append(f"parallelism {core.parallelism} capped at {workers} local workers")
        core = replace(core, parallelism=workers)

    items_file: str | None = None
    ref = spec.items.config_map_ref
    if ref is not None:
        assert config_map_data is not None  # to_core_spec needed it already
        path = scratch / f"items-{ref.key}"
        path.write_text(config_map_data[ref.key], encoding="utf-8")
        items_file = str(path.resolve())

    def items_env(indexes: IndexSet) -> str:
        return json.dumps(runner_items(job, indexes, items_file), separators=(",", ":"))

    worker = spec.template.spec.containers[0]
    env = {e.name: str((e.model_extra or {}).get("value", "")) for e in worker.env or ()}
    return (
        LocalJob(
            name=job.metadata.name,
            spec=core,
            command=[*(worker.command or ()), *(worker.args or ())],
            items_env=items_env,
            callable=spec.callable_,
            timeout_seconds=spec.timeouts.microtask_seconds,
            env=env,
            workdir=workdir,
        ),
        notes,
    )
