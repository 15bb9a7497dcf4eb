"""The user's kubeconfig as kubectl reads it: $KUBECONFIG or ~/.kube/config, a context."""

from __future__ import annotations

import os
from dataclasses import dataclass

import yaml
from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException


class KubeconfigError(ValueError):
    """No usable kubeconfig: the message says what is missing."""


@dataclass(frozen=True)
class Connection:
    """A client for the chosen context and the namespace commands default to."""

    api: client.ApiClient
    namespace: str
    context: str | None
    server: str = ""
    """The API server's URL, for messages ("cannot reach https://...")."""


def connect(context: str | None = None, namespace: str | None = None) -> Connection:
    """Connect as kubectl does: the current (or given) context, and its namespace unless given."""
    path = os.environ.get("KUBECONFIG") or None
    configuration = client.Configuration()
    try:
        contexts, current = config.list_kube_config_contexts(config_file=path)  # type: ignore[no-untyped-call]
        chosen = current
        if context is not None:
            matches = [c for c in contexts if c["name"] == context]
            if not matches:
                names = ", ".join(c["name"] for c in contexts) or "none"
                raise KubeconfigError(
                    f"no context {context!r} in the kubeconfig (contexts: {names})"
                )
            chosen = matches[0]
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=path, context=context, client_configuration=configuration
        )
    except (ConfigException, OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as error:
        if isinstance(error, KubeconfigError):
            raise
        where = path or "~/.kube/config"
        raise KubeconfigError(f"cannot use the kubeconfig {where}: {error}") from None
    default_namespace = (chosen or {}).get("context", {}).get("namespace") or "default"
    return Connection(
        api=client.ApiClient(configuration),
        namespace=namespace or default_namespace,
        context=(chosen or {}).get("name"),
        server=str(configuration.host or ""),
    )
