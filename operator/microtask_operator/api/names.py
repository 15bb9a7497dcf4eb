"""Names of the MicrotaskJob API: group, version, kind and the CRD's names."""

from __future__ import annotations

from typing import Final

GROUP: Final = "microtask.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "MicrotaskJob"
LIST_KIND: Final = "MicrotaskJobList"
PLURAL: Final = "microtaskjobs"
SINGULAR: Final = "microtaskjob"
SHORT_NAMES: Final = ("mtj",)
#: `kubectl get microtask` lists them; `all` so `kubectl get all` shows them next to their Jobs.
CATEGORIES: Final = ("all", "microtask")
CRD_NAME: Final = f"{PLURAL}.{GROUP}"
