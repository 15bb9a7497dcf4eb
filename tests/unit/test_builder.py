"""The Job builder: one valid, restricted, deterministic batch/v1 Job per shard."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes_validate
import pytest
from hypothesis import given
from hypothesis import strategies as st
from microtask_operator import builder, labels
from microtask_operator.adapter.observe import avoided_nodes
from microtask_operator.api.items import ItemsError
from microtask_operator.api.loading import validate_job
from microtask_operator.api.model import Items, MicrotaskJob
from microtask_operator.builder import build_job, job_name, parse_job_name
from microtask_operator.core.types import Pool, ShardPlan
from microtask_operator.settings import Settings, SettingsError
from microtask_runner import contract
from microtask_runner.indexset import IndexSet

from tests.integration.harness.containers import expand_vars
from tests.manifests.restricted import pod_spec_of, restricted_violations

OWNER = {"name": "thumbs", "namespace": "team-a", "uid": "5d7c9e4e-1111-2222-3333-444455556666"}
VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())


def mtj(**spec: Any) -> MicrotaskJob:
    document: dict[str, Any] = {
        "apiVersion": "microtask.dev/v1alpha1",
        "kind": "MicrotaskJob",
        "metadata": {"name": "thumbs"},
        "spec": {
            "items": {"range": {"start": 1000, "end": 2000, "step": 2}},
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "worker",
                            "image": "registry.example/thumbs:1.2",
                            "command": ["python", "thumb.py"],
                            "args": ["--size", "$(MICROTASK_ITEM)"],
                        }
                    ]
                }
            },
        },
    }
    document["spec"].update(spec)
    job, problems = validate_job(document)
    assert job is not None, problems
    return job


def plan(pool: Pool = Pool.CPU, **fields: Any) -> ShardPlan:
    values: dict[str, Any] = {
        "shard_id": 17,
        "indexes": IndexSet.from_range(170, 180),
        "attempt": 1,
        "pool": pool,
    }
    values.update(fields)
    return ShardPlan(**values)


def build(
    job: MicrotaskJob | None = None,
    shard: ShardPlan | None = None,
    *,
    store: str | None = None,
    source: Items | None = None,
    items_config_map: str | None = None,
    **settings: Any,
) -> Any:
    manifest = build_job(
        job or mtj(),
        OWNER,
        shard or plan(),
        Settings(**settings),
        store=store,
        source=source,
        items_config_map=items_config_map,
    )
    for version in VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)
    pod = pod_spec_of(manifest)
    assert pod is not None
    assert restricted_violations(pod) == []
    return manifest


def worker_of(manifest: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = manifest["spec"]["template"]["spec"]["containers"][0]
    return container


def env_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """The worker's variables: their value, or their `valueFrom`."""
    return {
        e["name"]: e.get("value", e.get("valueFrom")) for e in worker_of(manifest).get("env", [])
    }


def required_terms(manifest: dict[str, Any]) -> list[list[dict[str, Any]]]:
    pod = manifest["spec"]["template"]["spec"]
    affinity = pod.get("affinity", {}).get("nodeAffinity", {})
    terms = affinity.get("requiredDuringSchedulingIgnoredDuringExecution", {})
    return [term.get("matchExpressions", []) for term in terms.get("nodeSelectorTerms", [])]


# --- names ----------------------------------------------------------------------------------------


def test_job_names_are_deterministic_and_parse_back() -> None:
    assert job_name("thumbs", 17) == "thumbs-s17"
    assert parse_job_name("thumbs-s17") == ("thumbs", 17)
    assert parse_job_name("my-job-s2-s0") == ("my-job-s2", 0)
    for name in ("thumbs", "thumbs-s", "thumbs-s01", "thumbs-sx", "Thumbs-s1", "-s1"):
        assert parse_job_name(name) is None
    with pytest.raises(ValueError):
        job_name("thumbs", -1)


def test_the_longest_names_stay_valid() -> None:
    longest = "n" * 45
    name = job_name(longest, 10**16 - 1)
    assert len(name) == 63
    job = mtj()
    manifest = build_job(job, {**OWNER, "name": longest}, plan(shard_id=10**16 - 1), Settings())
    kubernetes_validate.validate(manifest, VERSIONS[-1], strict=True)
    assert manifest["metadata"]["name"] == name


# --- the Job --------------------------------------------------------------------------------------


def test_cpu_shard_job() -> None:
    manifest = build()
    meta = manifest["metadata"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    assert meta["name"] == "thumbs-s17"
    assert meta["namespace"] == "team-a"
    expected_labels = {
        labels.JOB: "thumbs",
        labels.JOB_UID: OWNER["uid"],
        labels.SHARD: "17",
        labels.ATTEMPT: "1",
        labels.POOL: "cpu",
        labels.MANAGED_BY: "microtask-operator",
    }
    assert meta["labels"] == expected_labels
    assert meta["annotations"] == {labels.INDEXES: "170-179"}
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "microtask.dev/v1alpha1",
            "kind": "MicrotaskJob",
            "name": "thumbs",
            "uid": OWNER["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    spec = manifest["spec"]
    assert (spec["backoffLimit"], spec["completions"], spec["parallelism"]) == (0, 1, 1)
    assert "activeDeadlineSeconds" not in spec and "suspend" not in spec
    template = spec["template"]
    assert template["metadata"]["labels"] == expected_labels
    assert template["metadata"]["annotations"] == {labels.INDEXES: "170-179"}
    pod = template["spec"]
    assert pod["restartPolicy"] == "Never"
    assert "tolerations" not in pod
    assert pod["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {labels.JOB: "thumbs"}},
        }
    ]
    assert required_terms(manifest) == [
        [{"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]}]
    ]
    worker = worker_of(manifest)
    assert worker["command"] == ["microtask-runner"]
    assert worker["args"] == ["--", "python", "thumb.py", "--size", "$(MICROTASK_ITEM)"]
    assert worker["terminationMessagePolicy"] == "File"
    assert "resources" not in worker
    env = env_of(manifest)
    assert env == {
        "MICROTASK_JOB": "thumbs",
        "MICROTASK_SHARD": "17",
        "MICROTASK_ATTEMPT": "1",
        "MICROTASK_POOL": "cpu",
        "MICROTASK_NODE": {"fieldRef": {"fieldPath": "spec.nodeName"}},
        "MICROTASK_INDEXES": "170-179",
        "MICROTASK_ITEMS": '{"range":{"start":1000,"step":2}}',
        "MICROTASK_RETRY_AFTER_SECONDS": "10.0",
        "MICROTASK_NO_RETRY_EXIT_CODES": "126,127",
    }
    # No spec.output: no result store, no volume.
    assert "volumes" not in pod and "volumeMounts" not in worker


def test_gpu_shard_job() -> None:
    job = mtj(placement={"accelerator": "auto"})
    manifest = build(job, plan(Pool.GPU))
    assert manifest["metadata"]["labels"][labels.POOL] == "gpu"
    pod = manifest["spec"]["template"]["spec"]
    assert required_terms(manifest) == [
        [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]
    ]
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert worker_of(manifest)["resources"] == {"limits": {"nvidia.com/gpu": "1"}}


def test_gpu_placement_from_the_spec_and_the_settings() -> None:
    job = mtj(
        placement={
            "accelerator": "gpu",
            "gpu": {
                "resourceName": "amd.com/gpu",
                "count": 2,
                "nodeLabel": "amd.com/gpu.present",
                "nodeSelector": {"gpu-type": "mi300"},
                "tolerations": [{"key": "amd.com/gpu", "operator": "Exists"}],
            },
        },
        template={
            "spec": {
                "containers": [
                    {
                        "name": "w",
                        "image": "x",
                        "command": ["run"],
                        "resources": {
                            "limits": {"memory": "8Gi", "amd.com/gpu": 8},
                            "requests": {"amd.com/gpu": 8, "cpu": "2"},
                        },
                    }
                ]
            }
        },
    )
    manifest = build(job, plan(Pool.GPU))
    pod = manifest["spec"]["template"]["spec"]
    assert required_terms(manifest) == [
        [{"key": "amd.com/gpu.present", "operator": "In", "values": ["true"]}]
    ]
    assert pod["nodeSelector"] == {"gpu-type": "mi300"}
    assert pod["tolerations"] == [{"key": "amd.com/gpu", "operator": "Exists"}]
    assert worker_of(manifest)["resources"] == {
        "limits": {"memory": "8Gi", "amd.com/gpu": "2"},
        "requests": {"cpu": "2"},
    }
    # The operator's settings apply where the spec says nothing.
    manifest = build(
        mtj(placement={"accelerator": "gpu"}),
        plan(Pool.GPU),
        gpu_resource_name="example.com/tpu",
        gpu_node_label="example.com/accelerator",
        gpu_node_label_value="yes",
        gpu_taint_key="example.com/accelerator",
        gpu_taint_effect="NoExecute",
    )
    assert required_terms(manifest) == [
        [{"key": "example.com/accelerator", "operator": "In", "values": ["yes"]}]
    ]
    assert manifest["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "example.com/accelerator", "operator": "Exists", "effect": "NoExecute"}
    ]
    assert worker_of(manifest)["resources"] == {"limits": {"example.com/tpu": "1"}}


def test_cpu_shards_never_ask_for_gpus() -> None:
    job = mtj(
        placement={
            "accelerator": "auto",
            "cpu": {
                "avoidGpuNodes": False,
                "nodeSelector": {"pool": "batch"},
                "tolerations": [{"key": "spot", "operator": "Equal", "value": "yes"}],
            },
        },
        template={
            "spec": {
                "nodeSelector": {"zone": "a"},
                "tolerations": [{"key": "spot", "operator": "Equal", "value": "yes"}],
                "containers": [
                    {
                        "name": "w",
                        "image": "x",
                        "command": ["run"],
                        "resources": {"limits": {"nvidia.com/gpu": "1"}},
                    }
                ],
            }
        },
    )
    manifest = build(job, plan(Pool.CPU))
    pod = manifest["spec"]["template"]["spec"]
    assert "affinity" not in pod
    assert pod["nodeSelector"] == {"zone": "a", "pool": "batch"}
    assert pod["tolerations"] == [{"key": "spot", "operator": "Equal", "value": "yes"}]
    assert "resources" not in worker_of(manifest)


def test_nodes_to_avoid() -> None:
    manifest = build(shard=plan(avoid_nodes_hard=("n2", "n1", "n2"), avoid_nodes_soft=("n3",)))
    assert required_terms(manifest) == [
        [
            {"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]},
            {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["n1", "n2"]},
        ]
    ]
    affinity = manifest["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    assert affinity["preferredDuringSchedulingIgnoredDuringExecution"] == [
        {
            "weight": 100,
            "preference": {
                "matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["n3"]}
                ]
            },
        }
    ]


def test_user_affinity_terms_each_get_the_pool_requirement() -> None:
    user_affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["x"]}]},
                ]
            },
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 5,
                    "preference": {"matchExpressions": [{"key": "ssd", "operator": "Exists"}]},
                }
            ],
        },
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []},
    }
    template = {
        "spec": {
            "affinity": user_affinity,
            "containers": [{"name": "w", "image": "x", "command": ["run"]}],
        }
    }
    job = mtj(template=template, placement={"accelerator": "gpu"})
    manifest = build(job, plan(Pool.GPU, avoid_nodes_soft=("bad",)))
    gpu = {"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}
    assert required_terms(manifest) == [
        [{"key": "zone", "operator": "In", "values": ["a"]}, gpu],
        [gpu],
    ]
    affinity = manifest["spec"]["template"]["spec"]["affinity"]
    assert affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][1]["matchFields"] == [{"key": "metadata.name", "operator": "In", "values": ["x"]}]
    assert len(affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]) == 2
    assert "podAntiAffinity" in affinity
    # The model is not modified by building.
    assert job.spec.template.model_dump(by_alias=True, exclude_unset=True) == template


def test_python_mode() -> None:
    template = {"spec": {"containers": [{"name": "w", "image": "x"}]}}
    manifest = build(mtj(callable="thumbs.work:run", template=template))
    worker = worker_of(manifest)
    assert worker["command"] == ["microtask-runner"]
    assert "args" not in worker
    assert env_of(manifest)["MICROTASK_CALLABLE"] == "thumbs.work:run"


def test_inline_items_carry_only_the_shards_items() -> None:
    values = [f"item-{i}" for i in range(20)] + [{"url": "https://x/ü"}]
    manifest = build(mtj(items={"list": values}), plan(indexes=IndexSet.parse("3-4,20")))
    items = json.loads(env_of(manifest)["MICROTASK_ITEMS"])
    assert items == {"values": {"3": "item-3", "4": "item-4", "20": {"url": "https://x/ü"}}}
    assert env_of(manifest)["MICROTASK_INDEXES"] == "3-4,20"


def test_config_map_items_are_mounted() -> None:
    job = mtj(items={"configMapRef": {"name": "urls", "key": "urls.txt"}})
    manifest = build(job)
    pod = manifest["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {
            "name": "microtask-items",
            "configMap": {"name": "urls", "items": [{"key": "urls.txt", "path": "urls.txt"}]},
        }
    ]
    assert worker_of(manifest)["volumeMounts"] == [
        {"name": "microtask-items", "mountPath": "/etc/microtask/items", "readOnly": True}
    ]
    assert json.loads(env_of(manifest)["MICROTASK_ITEMS"]) == {
        "file": "/etc/microtask/items/urls.txt",
        "format": "lines",
    }
    manifest = build(job, items_mount_path="/items")
    assert json.loads(env_of(manifest)["MICROTASK_ITEMS"])["file"] == "/items/urls.txt"


def test_timeouts_queue_priority_and_copies() -> None:
    job = mtj(
        timeouts={"microtaskSeconds": 2.5, "shardSeconds": 600.2, "jobSeconds": 7200},
        queueName="team-a-queue",
        priorityClassName="batch-low",
        placement={"spread": False},
    )
    manifest = build(job, plan(attempt=3, copy_of=12))
    spec = manifest["spec"]
    assert spec["activeDeadlineSeconds"] == 601
    assert spec["suspend"] is True
    meta_labels = manifest["metadata"]["labels"]
    assert meta_labels[labels.KUEUE_QUEUE_NAME] == "team-a-queue"
    assert meta_labels[labels.ATTEMPT] == "3"
    assert meta_labels[labels.COPY_OF] == "12"
    pod = spec["template"]["spec"]
    assert pod["priorityClassName"] == "batch-low"
    assert "topologySpreadConstraints" not in pod
    assert env_of(manifest)["MICROTASK_TIMEOUT_SECONDS"] == "2.5"
    whole = build(mtj(timeouts={"microtaskSeconds": 30}))
    assert env_of(whole)["MICROTASK_TIMEOUT_SECONDS"] == "30"


def test_the_pods_own_retries_follow_the_retry_policy() -> None:
    retry = {"maxAttempts": 3, "backoffSeconds": 4, "nonRetryableExitCodes": [2, 9]}
    first = env_of(build(mtj(retry=retry)))
    assert first[contract.ENV_RETRY_AFTER_SECONDS] == "4.0"
    assert first[contract.ENV_NO_RETRY_EXIT_CODES] == "2,9,126,127"
    # The backoff the operator would wait before the third attempt.
    second = env_of(build(mtj(retry=retry), plan(attempt=2)))
    assert second[contract.ENV_RETRY_AFTER_SECONDS] == "8.0"
    # The last attempt has no retry left to make; nor a pod when retry.inPod is off.
    off = {**retry, "retryCommandNotFound": True, "inPod": False}
    for manifest in (build(mtj(retry=retry), plan(attempt=3)), build(mtj(retry=off))):
        assert contract.ENV_RETRY_AFTER_SECONDS not in env_of(manifest)
        assert contract.ENV_NO_RETRY_EXIT_CODES not in env_of(manifest)
    no_codes = env_of(build(mtj(retry={"retryCommandNotFound": True})))
    assert contract.ENV_NO_RETRY_EXIT_CODES not in no_codes


def test_large_scattered_shards_use_the_compact_index_form() -> None:
    indexes = IndexSet.from_indexes(range(0, 20000, 2))
    manifest = build(mtj(microtasksPerShard=10000), plan(indexes=indexes))
    annotation = manifest["metadata"]["annotations"][labels.INDEXES]
    assert annotation.startswith("z:")
    assert IndexSet.from_compact(annotation) == indexes
    assert IndexSet.from_compact(env_of(manifest)["MICROTASK_INDEXES"]) == indexes


def test_user_template_is_kept_and_extended() -> None:
    template = {
        "metadata": {"labels": {"app": "thumbs"}, "annotations": {"owner": "me"}},
        "spec": {
            "serviceAccountName": "thumbs",
            "initContainers": [{"name": "fetch", "image": "busybox", "command": ["true"]}],
            "containers": [
                {
                    "name": "w",
                    "image": "x",
                    "command": ["run"],
                    "env": [{"name": "LEVEL", "value": "3"}],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                },
                {"name": "sidecar", "image": "y"},
            ],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        },
    }
    manifest = build(mtj(template=template))
    pod_meta = manifest["spec"]["template"]["metadata"]
    assert pod_meta["labels"]["app"] == "thumbs"
    assert pod_meta["annotations"]["owner"] == "me"
    pod = manifest["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "thumbs"
    assert pod["volumes"] == [{"name": "scratch", "emptyDir": {}}]
    assert env_of(manifest)["LEVEL"] == "3"
    assert [c["name"] for c in pod["containers"]] == ["w", "sidecar"]
    sidecar = pod["containers"][1]
    assert "env" not in sidecar and sidecar.get("command") is None
    for container in [*pod["initContainers"], *pod["containers"]]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}


def test_restricted_security_context_respects_explicit_values() -> None:
    manifest = build()
    pod = manifest["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
        "runAsUser": 65532,
    }
    assert worker_of(manifest)["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    template = {
        "spec": {
            "securityContext": {
                "runAsUser": 1000,
                "fsGroup": 2000,
                "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"},
            },
            "containers": [
                {
                    "name": "w",
                    "image": "x",
                    "command": ["run"],
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                    },
                }
            ],
        }
    }
    manifest = build(mtj(template=template))
    pod = manifest["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsUser": 1000,
        "fsGroup": 2000,
        "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"},
        "runAsNonRoot": True,
    }
    assert worker_of(manifest)["securityContext"] == {
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
        "allowPrivilegeEscalation": False,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"},
    }
    # No default user when the operator is told not to pick one.
    manifest = build(run_as_user=None)
    assert "runAsUser" not in manifest["spec"]["template"]["spec"]["securityContext"]


def test_an_explicitly_privileged_template_is_not_silently_fixed() -> None:
    template = {
        "spec": {
            "containers": [
                {
                    "name": "w",
                    "image": "x",
                    "command": ["run"],
                    "securityContext": {"allowPrivilegeEscalation": True},
                }
            ]
        }
    }
    manifest = build_job(mtj(template=template), OWNER, plan(), Settings())
    pod = pod_spec_of(manifest)
    assert pod is not None
    assert restricted_violations(pod) == [
        "spec.containers[0](w).securityContext.allowPrivilegeEscalation must be false"
    ]


@pytest.mark.parametrize(
    "context",
    [{"privileged": True}, {"capabilities": {"add": ["SYS_ADMIN"]}}, {"runAsUser": 0}],
)
def test_a_hostile_template_passes_through_as_a_valid_pod_for_admission_to_judge(
    context: dict[str, Any],
) -> None:
    template = {
        "spec": {
            "containers": [
                {"name": "w", "image": "x", "command": ["run"], "securityContext": context}
            ]
        }
    }
    pod = pod_spec_of(build_job(mtj(template=template), OWNER, plan(), Settings()))
    assert pod is not None
    worker = pod["containers"][0]["securityContext"]
    for key, value in context.items():
        if key == "capabilities":
            assert worker[key]["add"] == value["add"]
        else:
            assert worker[key] == value
    # No default the API server would refuse beside it (privileged + no escalation), and no
    # non-root rule a kubelet would refuse to start a root container under.
    if context.get("privileged") or "capabilities" in context:
        assert "allowPrivilegeEscalation" not in worker
    if context.get("runAsUser") == 0:
        assert pod["securityContext"]["runAsNonRoot"] is False
        assert worker["runAsNonRoot"] is False
    assert restricted_violations(pod)  # admission, not the builder, says no


def test_building_is_deterministic_and_pure() -> None:
    job = mtj(items={"list": list(range(200))}, placement={"accelerator": "gpu"})
    before = copy.deepcopy(job.model_dump(by_alias=True))
    first = build(job, plan(Pool.GPU, avoid_nodes_hard=("x",)))
    second = build(job, plan(Pool.GPU, avoid_nodes_hard=("x",)))
    assert first == second
    assert job.model_dump(by_alias=True) == before


# --- the result store -----------------------------------------------------------------------------

SECRET_KEYS = {
    "AWS_ACCESS_KEY_ID": {"secretKeyRef": {"name": "minio-creds", "key": "AWS_ACCESS_KEY_ID"}},
    "AWS_SECRET_ACCESS_KEY": {
        "secretKeyRef": {"name": "minio-creds", "key": "AWS_SECRET_ACCESS_KEY"}
    },
    "AWS_SESSION_TOKEN": {
        "secretKeyRef": {"name": "minio-creds", "key": "AWS_SESSION_TOKEN", "optional": True}
    },
}


def test_the_environment_names_are_the_runners_contract() -> None:
    for name in builder.__all__:
        if name.startswith("ENV_"):
            assert getattr(builder, name) is getattr(contract, name)


def test_s3_output() -> None:
    s3 = {
        "url": "s3://results/thumbs-runs/",
        "endpoint": "http://minio.storage:9000",
        "region": "eu-west-1",
        "secretName": "minio-creds",
    }
    manifest = build(mtj(output={"s3": s3}))
    env = env_of(manifest)
    assert env["MICROTASK_OUTPUT_URL"] == "s3://results/thumbs-runs/thumbs"
    assert env["MICROTASK_S3_ENDPOINT"] == "http://minio.storage:9000"
    assert env["AWS_REGION"] == "eu-west-1"
    assert {k: env[k] for k in SECRET_KEYS} == SECRET_KEYS
    pod = manifest["spec"]["template"]["spec"]
    assert "volumes" not in pod and "volumeMounts" not in worker_of(manifest)

    # The pods' own credentials (no Secret), AWS itself (no endpoint): nothing but the URL.
    env = env_of(build(mtj(output={"s3": {"url": "s3://results"}})))
    assert env["MICROTASK_OUTPUT_URL"] == "s3://results/thumbs"
    assert not {"MICROTASK_S3_ENDPOINT", "AWS_REGION", *SECRET_KEYS} & set(env)


def test_the_secrets_credentials_replace_the_templates() -> None:
    template = {
        "spec": {
            "containers": [
                {
                    "name": "w",
                    "image": "x",
                    "command": ["run"],
                    "env": [
                        {"name": "AWS_ACCESS_KEY_ID", "value": "stale"},
                        {"name": "AWS_PROFILE", "value": "team"},
                    ],
                }
            ]
        }
    }
    output = {"s3": {"url": "s3://results/p", "secretName": "minio-creds"}}
    env = worker_of(build(mtj(template=template, output=output)))["env"]
    names = [e["name"] for e in env]
    assert names.count("AWS_ACCESS_KEY_ID") == 1 and "AWS_PROFILE" in names
    assert (
        env_of(build(mtj(template=template, output=output)))["AWS_ACCESS_KEY_ID"]
        == (SECRET_KEYS["AWS_ACCESS_KEY_ID"])
    )


def test_a_rerun_writes_into_its_sources_store() -> None:
    job = mtj(output={"s3": {"url": "s3://results/runs"}})
    env = env_of(build(job, store="s3://results/runs/first"))
    assert env["MICROTASK_OUTPUT_URL"] == "s3://results/runs/first"
    # A store the spec cannot reach (another bucket) is not used: the job's own is.
    env = env_of(build(job, store="s3://elsewhere/runs/first"))
    assert env["MICROTASK_OUTPUT_URL"] == "s3://results/runs/thumbs"
    job = mtj(output={"volume": {"claimName": "results", "path": "batch"}})
    env = env_of(build(job, store="volume://claim:results/batch/first"))
    assert env["MICROTASK_OUTPUT_URL"] == "/var/run/microtask/output/batch/first"


def test_output_on_a_template_volume() -> None:
    template = {
        "spec": {
            "containers": [
                {
                    "name": "w",
                    "image": "x",
                    "command": ["run"],
                    "volumeMounts": [
                        {"name": "scratch", "mountPath": "/scratch"},
                        # The operator's path is its own: this mount gives way.
                        {"name": "scratch", "mountPath": "/var/run/microtask/output"},
                    ],
                }
            ],
            "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "results", "emptyDir": {}}],
        }
    }
    output = {"volume": {"name": "results", "path": "team-a/batches/"}}
    manifest = build(mtj(template=template, output=output))
    assert env_of(manifest)["MICROTASK_OUTPUT_URL"] == (
        "/var/run/microtask/output/team-a/batches/thumbs"
    )
    pod = manifest["spec"]["template"]["spec"]
    assert pod["volumes"] == template["spec"]["volumes"]
    assert worker_of(manifest)["volumeMounts"] == [
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "results", "mountPath": "/var/run/microtask/output"},
    ]
    assert not {"MICROTASK_S3_ENDPOINT", "AWS_REGION", *SECRET_KEYS} & set(env_of(manifest))


def test_output_on_a_claim() -> None:
    job = mtj(
        output={"volume": {"claimName": "shared-results"}},
        items={"configMapRef": {"name": "urls", "key": "urls.txt"}},
    )
    manifest = build(job)
    assert env_of(manifest)["MICROTASK_OUTPUT_URL"] == "/var/run/microtask/output/thumbs"
    pod = manifest["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {
            "name": "microtask-items",
            "configMap": {"name": "urls", "items": [{"key": "urls.txt", "path": "urls.txt"}]},
        },
        {"name": "microtask-output", "persistentVolumeClaim": {"claimName": "shared-results"}},
    ]
    assert worker_of(manifest)["volumeMounts"] == [
        {"name": "microtask-items", "mountPath": "/etc/microtask/items", "readOnly": True},
        {"name": "microtask-output", "mountPath": "/var/run/microtask/output"},
    ]


# --- reruns (items.fromJob) -----------------------------------------------------------------------


def rerun(**spec: Any) -> MicrotaskJob:
    return mtj(items={"fromJob": {"name": "first"}}, **spec)


def test_a_rerun_runs_its_sources_items_at_their_indexes() -> None:
    shard = plan(indexes=IndexSet.parse("3,7-8"))
    listed = Items.model_validate({"list": [f"url-{i}" for i in range(10)]})
    items = json.loads(env_of(build(rerun(), shard, source=listed))["MICROTASK_ITEMS"])
    assert items == {"values": {"3": "url-3", "7": "url-7", "8": "url-8"}}
    ranged = Items.model_validate({"range": {"start": 100, "end": 200, "step": 5}})
    items = json.loads(env_of(build(rerun(), shard, source=ranged))["MICROTASK_ITEMS"])
    assert items == {"range": {"start": 100, "step": 5}}
    mapped = Items.model_validate({"configMapRef": {"name": "urls", "key": "u", "format": "json"}})
    manifest = build(rerun(), shard, source=mapped)
    assert json.loads(env_of(manifest)["MICROTASK_ITEMS"]) == {
        "file": "/etc/microtask/items/u",
        "format": "json",
    }
    assert manifest["spec"]["template"]["spec"]["volumes"] == [
        {
            "name": "microtask-items",
            "configMap": {"name": "urls", "items": [{"key": "u", "path": "u"}]},
        }
    ]
    assert env_of(manifest)["MICROTASK_INDEXES"] == "3,7-8"
    assert env_of(manifest)["MICROTASK_JOB"] == "thumbs"


def test_a_rerun_needs_its_sources_items() -> None:
    with pytest.raises(ItemsError, match="first"):
        build_job(rerun(), OWNER, plan(), Settings())


# --- settings -------------------------------------------------------------------------------------


def test_settings_from_the_environment() -> None:
    assert Settings.from_env({}) == Settings()
    settings = Settings.from_env(
        {
            "MICROTASK_RUNNER_COMMAND": "python3 -m microtask_runner",
            "MICROTASK_GPU_RESOURCE_NAME": "amd.com/gpu",
            "MICROTASK_GPU_NODE_LABEL": "amd.com/gpu.present",
            "MICROTASK_GPU_NODE_LABEL_VALUE": "yes",
            "MICROTASK_GPU_TAINT_KEY": "amd.com/gpu",
            "MICROTASK_GPU_TAINT_EFFECT": "NoExecute",
            "MICROTASK_RUN_AS_USER": "none",
            "MICROTASK_ITEMS_MOUNT_PATH": "/items/",
            "MICROTASK_INDEXES": "ignored: the runner's variable",
        }
    )
    assert settings.runner_command == ("python3", "-m", "microtask_runner")
    assert settings.gpu_resource_name == "amd.com/gpu"
    assert settings.gpu_node_label == "amd.com/gpu.present"
    assert settings.gpu_node_label_value == "yes"
    assert settings.gpu_tolerations() == [
        {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoExecute"}
    ]
    assert settings.run_as_user is None
    assert settings.items_mount_path == "/items"
    assert Settings.from_env({"MICROTASK_RUN_AS_USER": "1000"}).run_as_user == 1000
    assert Settings.from_env({"MICROTASK_RUNNER_COMMAND": "  "}) == Settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MICROTASK_RUNNER_COMMAND", "'unclosed"),
        ("MICROTASK_GPU_RESOURCE_NAME", "not a name"),
        ("MICROTASK_GPU_NODE_LABEL_VALUE", "x" * 64),
        ("MICROTASK_GPU_TAINT_EFFECT", "Sometimes"),
        ("MICROTASK_RUN_AS_USER", "0"),
        ("MICROTASK_RUN_AS_USER", "root"),
        ("MICROTASK_ITEMS_MOUNT_PATH", "relative/path"),
    ],
)
def test_bad_settings_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})


# --- env values reach the program as written ------------------------------------------------------

AWKWARD = ["$(MICROTASK_JOB)", "a$$b", "$(UNDEFINED)", "$", "$$$(X)", "x$", "$(", "$ü"]


def kubelet_env(manifest: dict[str, Any]) -> dict[str, str]:
    """The worker's literal variables as the kubelet gives them to the process: in order, each
    `value` expanded with the variables before it (Kubernetes' rules, `expand_vars`)."""
    env: dict[str, str] = {}
    for variable in worker_of(manifest).get("env", []):
        if "value" in variable:
            env[variable["name"]] = expand_vars(variable["value"], env)
    return env


def test_every_value_the_operator_writes_arrives_byte_for_byte() -> None:
    template = {
        "spec": {
            "containers": [
                {
                    "name": "w",
                    "image": "x",
                    "command": ["run", "$(MICROTASK_ITEM)"],
                    # The template's own variables keep Kubernetes' meaning.
                    "env": [{"name": "WHO", "value": "$(MICROTASK_JOB)"}],
                }
            ]
        }
    }
    job = mtj(
        items={"list": AWKWARD},
        template=template,
        output={"s3": {"url": "s3://results/a$(MICROTASK_JOB)$$b", "region": "eu-west-1"}},
    )
    manifest = build(job, plan(indexes=IndexSet.from_range(0, len(AWKWARD))))
    arrived = kubelet_env(manifest)
    values = json.loads(arrived["MICROTASK_ITEMS"])["values"]
    assert [values[str(i)] for i in range(len(AWKWARD))] == AWKWARD
    assert arrived["MICROTASK_OUTPUT_URL"] == "s3://results/a$(MICROTASK_JOB)$$b/thumbs"
    assert arrived["MICROTASK_JOB"] == "thumbs"
    assert arrived["WHO"] == "$(MICROTASK_JOB)"  # declared before MICROTASK_JOB: stays
    written = env_of(manifest)
    assert written["MICROTASK_OUTPUT_URL"] == "s3://results/a$$(MICROTASK_JOB)$$$$b/thumbs"
    assert written["WHO"] == "$(MICROTASK_JOB)"
    # The user's command is the runner's to fill in (`$(MICROTASK_ITEM)` is no variable of the
    # container, so the kubelet leaves it).
    assert worker_of(manifest)["args"] == ["--", "run", "$(MICROTASK_ITEM)"]


@given(st.text())
def test_an_escaped_value_expands_to_itself(text: str) -> None:
    environment = {"A": "1", "MICROTASK_JOB": "thumbs", "": "empty"}
    assert expand_vars(builder.escape_env_value(text), environment) == text


def test_the_test_kubelet_expands_as_kubernetes_does() -> None:
    # k8s.io/kubernetes third_party/forked/golang/expansion: the cases of its own tests.
    env = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": ""}
    cases = {
        "$(VAR_A)": "A",
        "___$(VAR_B)___": "___B___",
        "$(VAR_A)-$(VAR_A)": "A-A",
        "$(VAR_A)$(VAR_B)$(VAR_C)": "ABC",
        "$(VAR_REF)": "$(VAR_A)",  # values are not expanded again
        "$(VAR_EMPTY)": "",
        "$$(VAR_A)": "$(VAR_A)",
        "$$$(VAR_A)": "$A",
        "$$$$(VAR_A)": "$$(VAR_A)",
        "$(VAR_DNE)": "$(VAR_DNE)",
        "$(VAR_A": "$(VAR_A",
        "$(": "$(",
        "$()": "$()",
        "$(VAR_A$(VAR_B))": "$(VAR_A$(VAR_B))",  # the name runs to the first `)`
        "$VAR_A": "$VAR_A",
        "$": "$",
        "x$": "x$",
        "$$": "$",
        "a$$b": "a$b",
        "\\$(VAR_A)": "\\A",
    }
    for written, expected in cases.items():
        assert expand_vars(written, env) == expected, written


# --- the items' snapshot --------------------------------------------------------------------------

DIGEST = "sha256:" + "ab" * 32


def test_the_snapshots_name_is_deterministic_and_valid() -> None:
    assert builder.snapshot_name("thumbs", OWNER["uid"]) == "thumbs-items-5d7c9e4e"
    assert builder.snapshot_name("thumbs", OWNER["uid"].upper()) == "thumbs-items-5d7c9e4e"
    longest = builder.snapshot_name("n" * 45, OWNER["uid"])
    assert len(longest) == 60
    # A re-created MicrotaskJob (another uid) gets another copy.
    assert builder.snapshot_name("thumbs", "0f" + OWNER["uid"][2:]) != "thumbs-items-5d7c9e4e"
    for uid in ("", "short", "5d7c9e4-", "5d7c9e4_x"):
        with pytest.raises(ValueError, match="no valid ConfigMap name"):
            builder.snapshot_name("thumbs", uid)


def test_the_snapshot_is_an_immutable_configmap_the_job_owns() -> None:
    text = "a\n$(b)\nü\n"
    snapshot = builder.snapshot_config_map(OWNER, "urls.txt", text, DIGEST)
    for version in VERSIONS:
        kubernetes_validate.validate(snapshot, version, strict=True)
    assert snapshot["kind"] == "ConfigMap" and snapshot["immutable"] is True
    assert snapshot["data"] == {"urls.txt": text}
    meta = snapshot["metadata"]
    assert (meta["name"], meta["namespace"]) == ("thumbs-items-5d7c9e4e", "team-a")
    assert meta["annotations"] == {builder.ITEMS_DIGEST_ANNOTATION: DIGEST}
    assert meta["labels"] == {
        labels.JOB: "thumbs",
        labels.JOB_UID: OWNER["uid"],
        labels.MANAGED_BY: labels.MANAGED_BY_VALUE,
    }
    # Owned like the shards' Jobs: it goes with the MicrotaskJob.
    assert meta["ownerReferences"] == build()["metadata"]["ownerReferences"]
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "microtask.dev/v1alpha1",
            "kind": "MicrotaskJob",
            "name": "thumbs",
            "uid": OWNER["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_shards_mount_the_snapshot_when_there_is_one() -> None:
    job = mtj(items={"configMapRef": {"name": "urls", "key": "urls.txt"}})
    manifest = build(job, items_config_map="thumbs-items-5d7c9e4e")
    pod = manifest["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {
            "name": "microtask-items",
            "configMap": {
                "name": "thumbs-items-5d7c9e4e",
                "items": [{"key": "urls.txt", "path": "urls.txt"}],
            },
        }
    ]
    # Same key, same path: the runner reads the copy where it read the original.
    assert worker_of(manifest)["volumeMounts"] == worker_of(build(job))["volumeMounts"]
    assert env_of(manifest)["MICROTASK_ITEMS"] == env_of(build(job))["MICROTASK_ITEMS"]
    # Other sources mount nothing, whatever the argument says.
    assert "volumes" not in build(mtj(), items_config_map="x")["spec"]["template"]["spec"]


@pytest.mark.parametrize("pool", [Pool.CPU, Pool.GPU])
def test_the_nodes_a_job_keeps_off_are_read_back_from_it(pool: Pool) -> None:
    kept_off = ("node-b", "node-a")
    manifest = build_job(mtj(), OWNER, plan(pool, avoid_nodes_hard=kept_off), Settings())
    assert avoided_nodes(manifest["spec"]) == ("node-a", "node-b")
    assert avoided_nodes(build_job(mtj(), OWNER, plan(pool), Settings())["spec"]) == ()
    # Terms are alternatives: a node one of them allows is not kept off.
    either = {
        "template": {
            "spec": {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {
                                            "key": "kubernetes.io/hostname",
                                            "operator": "NotIn",
                                            "values": ["a", "b"],
                                        }
                                    ]
                                },
                                {
                                    "matchExpressions": [
                                        {
                                            "key": "kubernetes.io/hostname",
                                            "operator": "NotIn",
                                            "values": ["b"],
                                        }
                                    ]
                                },
                            ]
                        }
                    }
                }
            }
        }
    }
    assert avoided_nodes(either) == ("b",)
