"""API failures worded like kubectl, one line per problem; the bodies are the API server's own."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException
from microtask_operator.kubecli.client import JOBS, Kube
from microtask_operator.kubecli.config import Connection, KubeconfigError, connect
from microtask_operator.kubecli.errors import CliError, Request, api_error, connection_error
from microtask_operator.kubecli.options import guarded, program_name

LIST = Request("list", JOBS, namespace="team")


def status(code: int, reason: str, message: str, **details: Any) -> str:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return json.dumps(body)


def test_forbidden_repeats_the_servers_sentence_which_names_user_verb_and_resource() -> None:
    message = (
        'microtaskjobs.microtask.dev is forbidden: User "system:serviceaccount:team:ci" cannot '
        'list resource "microtaskjobs" in API group "microtask.dev" in the namespace "team"'
    )
    error = api_error(403, status(403, "Forbidden", message, group="microtask.dev"), LIST)
    assert error.lines == [f"Error from server (Forbidden): {message}"]
    assert (error.status, error.reason, error.code) == (403, "Forbidden", 1)


def test_forbidden_without_a_sentence_says_what_was_refused() -> None:
    error = api_error(403, "", Request("delete", JOBS, "thumbs", "team"))
    assert error.lines == [
        "Error from server (Forbidden): you cannot delete "
        'microtaskjobs.microtask.dev "thumbs" in the namespace "team"'
    ]


def test_not_found() -> None:
    body = status(
        404,
        "NotFound",
        'microtaskjobs.microtask.dev "nope" not found',
        name="nope",
        group="microtask.dev",
        kind="microtaskjobs",
    )
    error = api_error(404, body, Request("get", JOBS, "nope", "team"))
    assert error.lines == [
        'Error from server (NotFound): microtaskjobs.microtask.dev "nope" not found'
    ]


def test_a_resource_type_not_served_points_at_the_crd() -> None:
    # What kube-apiserver answers for a group it does not serve: plain text.
    error = api_error(404, "404 page not found\n", LIST)
    assert error.lines[0] == "Error from server (NotFound): 404 page not found"
    assert "is the CRD installed?" in error.lines[1]


def test_invalid_prints_each_field_error_on_its_own_line() -> None:
    # kube-apiserver's answer to a MicrotaskJob its CRD's schema refuses.
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'MicrotaskJob.microtask.dev "bad" is invalid: [spec.retry.maxAttempts: ...]',
        "reason": "Invalid",
        "details": {
            "name": "bad",
            "group": "microtask.dev",
            "kind": "MicrotaskJob",
            "causes": [
                {
                    "reason": "FieldValueInvalid",
                    "message": "Invalid value: -1: spec.retry.maxAttempts in body should be "
                    "greater than or equal to 1",
                    "field": "spec.retry.maxAttempts",
                },
                {
                    "reason": "FieldValueInvalid",
                    "message": "Invalid value: 0: spec.parallelism in body should be greater "
                    "than or equal to 1",
                    "field": "spec.parallelism",
                },
            ],
        },
        "code": 422,
    }
    error = api_error(422, json.dumps(body), Request("create", JOBS, "bad", "team"))
    assert error.lines == [
        'error: The MicrotaskJob "bad" is invalid: spec.retry.maxAttempts: Invalid value: -1: '
        "spec.retry.maxAttempts in body should be greater than or equal to 1",
        'error: The MicrotaskJob "bad" is invalid: spec.parallelism: Invalid value: 0: '
        "spec.parallelism in body should be greater than or equal to 1",
    ]


def test_invalid_without_causes_keeps_the_message() -> None:
    body = status(422, "Invalid", 'MicrotaskJob "x" is invalid: metadata.name: too long')
    error = api_error(422, body, Request("create", JOBS, "x", "team"))
    assert error.lines == ['error: MicrotaskJob "x" is invalid: metadata.name: too long']


@pytest.mark.parametrize(
    ("code", "reason", "message", "line"),
    [
        (
            409,
            "AlreadyExists",
            'microtaskjobs.microtask.dev "ok" already exists',
            'Error from server (AlreadyExists): microtaskjobs.microtask.dev "ok" already exists',
        ),
        (
            409,
            "Conflict",
            "Operation cannot be fulfilled: the object has been modified",
            "Error from server (Conflict): Operation cannot be fulfilled: the object has been "
            "modified",
        ),
        (
            429,
            "TooManyRequests",
            "storage is (re)initializing",
            "Error from server (TooManyRequests): storage is (re)initializing",
        ),
        (500, "InternalError", "etcd\ntimeout", "Error from server (InternalError): etcd timeout"),
    ],
)
def test_other_refusals_read_like_kubectl(code: int, reason: str, message: str, line: str) -> None:
    error = api_error(code, status(code, reason, message), LIST)
    assert error.lines == [line]
    assert error.reason == reason


def test_unauthorized_and_bodies_that_are_not_json() -> None:
    assert api_error(401, "Unauthorized", LIST).lines == [
        "error: You must be logged in to the server (Unauthorized)"
    ]
    assert api_error(502, "<html>bad gateway</html>", LIST).lines == [
        "Error from server (BadGateway): <html>bad gateway</html>"
    ]
    assert api_error(503, b"", LIST).lines == ["Error from server (ServiceUnavailable): HTTP 503"]


def test_connection_errors_name_the_server_and_the_cause() -> None:
    refused = urllib3.exceptions.MaxRetryError(
        None,  # type: ignore[arg-type]
        "/apis",
        urllib3.exceptions.NewConnectionError(
            None,  # type: ignore[arg-type]
            "HTTPSConnection(host='127.0.0.1', port=1): Failed to establish a new connection: "
            "[Errno 111] Connection refused",
        ),
    )
    assert connection_error(refused, "https://127.0.0.1:1").lines == [
        "error: cannot reach the Kubernetes API server at https://127.0.0.1:1: connection "
        "refused (is the cluster running, and is the kubeconfig's context the right one?)"
    ]
    assert (
        "unknown host"
        in connection_error(
            socket.gaierror("[Errno -2] Name or service not known"), "https://nowhere:6443"
        ).lines[0]
    )
    tls = "SSLError\n[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed"
    assert "TLS certificate not trusted" in connection_error(tls, "https://x").lines[0]


def test_with_hint_adds_a_line() -> None:
    error = CliError("Error from server (AlreadyExists): x", status=409, reason="AlreadyExists")
    hinted = error.with_hint("hint: delete it")
    assert hinted.lines == ["Error from server (AlreadyExists): x", "hint: delete it"]
    assert (hinted.status, hinted.reason) == (409, "AlreadyExists")


class _Raising:
    """Stands in for a generated API method."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error


def _kube() -> Kube:
    from kubernetes import client

    return Kube(Connection(client.ApiClient(), "team", None, "https://api.example:6443"))


def test_the_client_turns_every_failure_into_a_cli_error() -> None:
    kube = _kube()
    forbidden = ApiException(status=403, reason="Forbidden")
    forbidden.body = status(403, "Forbidden", "x is forbidden: User cannot get resource")
    with pytest.raises(CliError) as caught:
        kube._call(Request("get", JOBS, "a", "team"), _Raising(forbidden))
    assert caught.value.status == 403
    # The client reports a failed TLS handshake as status 0.
    tls = ApiException(status=0, reason="SSLError\ncertificate verify failed")
    with pytest.raises(CliError) as caught:
        kube._call(Request("get", JOBS, "a", "team"), _Raising(tls))
    assert caught.value.lines[0].startswith(
        "error: cannot reach the Kubernetes API server at https://api.example:6443: TLS"
    )
    with pytest.raises(CliError) as caught:
        kube._call(Request("get", JOBS), _Raising(ConnectionResetError("Connection reset")))
    assert "connection reset" in caught.value.lines[0]


def test_guarded_prints_lines_and_returns_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    def refused() -> int:
        raise CliError(["first problem", "second problem"], code=1)

    def no_config() -> int:
        raise KubeconfigError("cannot use the kubeconfig /x: missing")

    assert guarded(refused) == 1
    assert guarded(no_config) == 1
    assert guarded(lambda: 0) == 0
    assert capsys.readouterr().err.splitlines() == [
        "first problem",
        "second problem",
        "error: cannot use the kubeconfig /x: missing",
    ]


def test_a_missing_or_broken_kubeconfig_is_a_kubeconfig_error(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(KubeconfigError, match="cannot use the kubeconfig"):
        connect()
    broken = tmp_path / "broken"
    broken.write_text("clusters: [unclosed")
    monkeypatch.setenv("KUBECONFIG", str(broken))
    with pytest.raises(KubeconfigError, match="cannot use the kubeconfig"):
        connect()


@pytest.mark.parametrize(
    ("argv0", "name"),
    [
        ("/usr/local/bin/kubectl-microtask", "kubectl microtask"),
        ("kubectl-microtask", "kubectl microtask"),
        ("/venv/bin/microtask", "microtask"),
        ("/venv/lib/python3.11/site-packages/microtask_operator/cli.py", "microtask"),
        ("", "microtask"),
    ],
)
def test_the_program_is_named_as_it_was_invoked(argv0: str, name: str) -> None:
    assert program_name(argv0) == name
