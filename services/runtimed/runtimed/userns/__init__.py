"""Pod user namespaces (hostUsers: false): the mappings the kubelet asks for and how they
are checked (`mappings`), and the kernel's ID-mapped mounts through ctypes (`idmap`).
Pinning the namespaces and ID-mapping a pod's mounts is `sandbox.idmapped`'s."""
