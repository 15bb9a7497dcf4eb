"""Offline checks of deploy/, the Helm chart, the kind config and the images."""
