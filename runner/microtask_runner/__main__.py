"""``python -m microtask_runner``: the same as the ``microtask-runner`` command.

Useful in images where only the package was copied, without its console script.
"""

from .cli import main

raise SystemExit(main())
