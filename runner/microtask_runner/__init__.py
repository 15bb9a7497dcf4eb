"""Microtask runner: the in-pod side that runs a shard's microtasks and reports their outcomes.

Standard library only, so it installs into any image that has python3.

* ``microtask_runner.indexset`` — ``IndexSet``, compact sets of microtask indexes;
* ``microtask_runner.report`` — ``Report``, the ≤ 4096-byte outcome report the
  operator reads from the pod's termination message;
* ``microtask_runner.items`` — the item sources of ``MICROTASK_ITEMS``;
* ``microtask_runner.contract`` — the environment variables, the result store's
  layout and the log delimiters, for everything that starts the runner or reads
  what it wrote;
* ``microtask_runner.output`` — ``Sink``, where records and log copies go;
* ``microtask_runner.cli`` — the ``microtask-runner`` command (also
  ``python -m microtask_runner``).
"""

from .indexset import IndexSet
from .report import MAX_REPORT_BYTES, REPORT_VERSION, Report, ReportError

__all__ = ["MAX_REPORT_BYTES", "REPORT_VERSION", "IndexSet", "Report", "ReportError", "__version__"]

__version__ = "0.1.0"
