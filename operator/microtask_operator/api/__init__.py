"""The MicrotaskJob API (`microtask.dev/v1alpha1`): model, limits, CRD, loading and conversion.

* `model` — the pydantic models (`MicrotaskJob`, `MicrotaskJobSpec`, `MicrotaskJobStatus`...);
* `limits` — the safety limits the model and the loader enforce;
* `names` — group, version, kind, CRD names; `conditions` — phases, condition types, reasons;
* `documents` — reading possibly hostile files into YAML documents; `problems` — what is wrong,
  with its place; `loading` — validation of the documents and the entry points (`load_file`);
* `items` — counting microtasks and the runner's MICROTASK_ITEMS; `convert` — `to_core_spec`;
* `crd` — the CustomResourceDefinition generated from the model.

Importing this package loads pydantic; CLI modules import it inside their functions.
"""

from __future__ import annotations

from microtask_operator.api.conditions import ConditionReason, ConditionType, Phase
from microtask_operator.api.convert import to_core_spec
from microtask_operator.api.items import ItemsError, runner_items, total_microtasks
from microtask_operator.api.loading import (
    InvalidSpecError,
    LoadedJob,
    LoadResult,
    Problem,
    load_file,
    load_text,
    parse_job,
    validate_job,
)
from microtask_operator.api.model import MicrotaskJob, MicrotaskJobSpec, MicrotaskJobStatus
from microtask_operator.api.names import API_VERSION, GROUP, KIND, PLURAL, VERSION

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "ConditionReason",
    "ConditionType",
    "InvalidSpecError",
    "ItemsError",
    "LoadResult",
    "LoadedJob",
    "MicrotaskJob",
    "MicrotaskJobSpec",
    "MicrotaskJobStatus",
    "Phase",
    "Problem",
    "load_file",
    "load_text",
    "parse_job",
    "runner_items",
    "to_core_spec",
    "total_microtasks",
    "validate_job",
]
