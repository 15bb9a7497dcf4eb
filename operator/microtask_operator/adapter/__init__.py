"""The kopf adapter: Kubernetes objects in, the core's decisions out as API calls. Kept thin."""
