"""Pod sandboxes without an infra container: pinned namespaces and per-pod files."""
