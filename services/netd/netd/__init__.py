"""crib's netd: pod network namespaces and CNI plugins."""
