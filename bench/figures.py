"""One measured figure, as every benchmark reports it: a JSON line that `bench/run.py` prints.

`baseline` is the floor or peer measured in the same run (for example `multiprocessing.Pool` on
the same work) or a fixed limit (etcd's object size); `ratio` is value / baseline, so lower is
better for times and sizes. Figures are never asserted: the machines are shared and noisy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Figure:
    name: str  # stable, dotted: "python_mode.noop_1m"; the README's table is keyed by it
    value: float
    unit: str  # "s", "ms", "bytes", "writes/microtask", ...
    baseline: float | None = None
    against: str = ""  # what the baseline is: "multiprocessing.Pool(2)", "xargs -P2", "limit"

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def line(self) -> str:
        data = asdict(self)
        data["ratio"] = None if self.ratio is None else round(self.ratio, 3)
        return json.dumps(data, sort_keys=False)
