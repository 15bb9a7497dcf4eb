"""Test harness: a Kubernetes API emulator and a fake control plane (see the modules)."""
