"""A real Kubernetes control plane for the API-level tests, with our kubelet and a fault proxy.

* :mod:`.certs` - a throw-away CA, the API server's serving certificate, service-account keys;
* :mod:`.controlplane` - etcd, kube-apiserver, kube-controller-manager and kube-scheduler,
  built from source (``hack/kube-binaries.sh``), as child processes with an audit log;
* :mod:`.kubelet` - our kubelet: registers nodes, keeps their leases, runs each bound pod's
  ``containers[0]`` as a local process (set up by :mod:`.containers`) and reports its status
  with the termination message;
* :mod:`.faultproxy` - a reverse proxy that answers chosen requests with API errors, holds
  them back or cuts watch streams;
* :mod:`.apiclient` - the harness's own small JSON client (sync and async);
* :mod:`.cluster` - all of it behind synchronous helpers for tests, a namespace per test;
* :mod:`.devcluster` - the same cluster in the background for people (``hack/dev-cluster.sh``);
* :mod:`.minio` - a MinIO server built from source, the S3-compatible result store of tests.
"""
