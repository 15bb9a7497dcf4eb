"""Reading the MicrotaskJob to simulate: the API's own loader and `to_core_spec`, nothing else.

Using the same path as `microtask run` and the operator means the simulated job has exactly the
defaults and validation a real one has; this module only turns "one valid job, please" into a
short error list.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..core.types import CoreSpec


class JobFileError(ValueError):
    """A MicrotaskJob file that cannot be simulated; `problems` lists each as `path: message`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass(frozen=True)
class Job:
    name: str
    spec: CoreSpec


def load_job(path: str | Path) -> Job:
    """The one valid MicrotaskJob of a file (with its ConfigMap, if its items come from one)."""
    from ..api.convert import to_core_spec
    from ..api.items import ItemsError
    from ..api.loading import load_file

    result = load_file(str(path))
    source = result.source
    if not result.ok:
        # The source is said once, by the caller; each problem keeps its document and path.
        raise JobFileError(source, [str(replace(p, source=None)) for p in result.problems])
    if len(result.jobs) != 1:
        raise JobFileError(
            source,
            [f"expected one MicrotaskJob, found {len(result.jobs)}: simulate one job at a time"],
        )
    loaded = result.jobs[0]
    try:
        spec = to_core_spec(loaded.job, result.config_map_data(loaded))
    except ItemsError as error:
        hint = " (put the ConfigMap in the same file, or use an items range of the same size)"
        raise JobFileError(source, [f"spec.items.configMapRef: {error}{hint}"]) from error
    return Job(name=loaded.job.metadata.name, spec=spec)
