"""The Pod Security Standards' "restricted" profile, as checks on a pod spec.

Mirrors the rules the API server's PodSecurity admission enforces for
`pod-security.kubernetes.io/enforce: restricted` (the baseline rules included),
so a manifest that passes here is admitted into a restricted namespace. Each
violation names the field, like the admission's own messages.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Volume types the restricted profile allows.
ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
# Sysctls the baseline profile allows.
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SECCOMP_OK = {"RuntimeDefault", "Localhost"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}

Spec = Mapping[str, Any]


def _containers(pod: Spec) -> Iterator[tuple[str, Spec]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for index, container in enumerate(pod.get(field) or []):
            yield f"spec.{field}[{index}]({container.get('name', '?')})", container


def restricted_violations(pod: Spec) -> list[str]:
    """Every rule of the restricted profile that the pod spec `pod` breaks."""
    problems: list[str] = []
    pod_sc: Spec = pod.get("securityContext") or {}

    # Baseline: host namespaces, ports and paths.
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"spec.{field} must not be true")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("spec.securityContext.windowsOptions.hostProcess must not be true")
    for index, volume in enumerate(pod.get("volumes") or []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"spec.volumes[{index}] uses {sorted(kinds - ALLOWED_VOLUMES)}")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(f"spec.securityContext.sysctls: {sysctl.get('name')} is not safe")
    problems.extend(_selinux("spec.securityContext", pod_sc))
    problems.extend(_apparmor("spec.securityContext", pod_sc))

    pod_non_root = pod_sc.get("runAsNonRoot") is True
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_OK:
        problems.append(f"spec.securityContext.seccompProfile.type must not be {pod_seccomp}")
    if pod_sc.get("runAsUser") == 0:
        problems.append("spec.securityContext.runAsUser must not be 0")

    for where, container in _containers(pod):
        sc: Spec = container.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{where}.securityContext.privileged must not be true")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            problems.append(f"{where}.securityContext.windowsOptions.hostProcess must not be true")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{where}.ports: hostPort {port['hostPort']} is not allowed")
        if sc.get("procMount") not in (None, "Default"):
            problems.append(f"{where}.securityContext.procMount must be Default")
        problems.extend(_selinux(f"{where}.securityContext", sc))
        problems.extend(_apparmor(f"{where}.securityContext", sc))
        # Restricted proper.
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}.securityContext.allowPrivilegeEscalation must be false")
        non_root = sc.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            problems.append(f"{where}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            problems.append(f"{where}.securityContext.runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in SECCOMP_OK:
            problems.append(f"{where}.securityContext.seccompProfile.type must not be {seccomp}")
        if seccomp is None and pod_seccomp is None:
            problems.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost")
        capabilities: Spec = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{where}.securityContext.capabilities.drop must include ALL")
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            problems.append(
                f"{where}.securityContext.capabilities.add must not add {sorted(added)}"
            )
    return problems


def _selinux(where: str, sc: Spec) -> list[str]:
    options: Spec = sc.get("seLinuxOptions") or {}
    problems = []
    if options.get("type", "") not in SELINUX_TYPES:
        problems.append(f"{where}.seLinuxOptions.type {options['type']} is not allowed")
    problems.extend(
        f"{where}.seLinuxOptions.{f} must not be set" for f in ("user", "role") if options.get(f)
    )
    return problems


def _apparmor(where: str, sc: Spec) -> list[str]:
    profile = (sc.get("appArmorProfile") or {}).get("type")
    if profile not in (None, "RuntimeDefault", "Localhost"):
        return [f"{where}.appArmorProfile.type must not be {profile}"]
    return []


def pod_spec_of(obj: Mapping[str, Any]) -> Spec | None:
    """The pod spec inside a workload object (Pod, Deployment, Job, CronJob, ...), if any."""
    kind = obj.get("kind")
    spec: Spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    if kind in {
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "Job",
        "ReplicationController",
    }:
        return spec["template"]["spec"]  # type: ignore[no-any-return]
    return None
