"""Talking to OCI distribution registries: hosts, auth challenges, manifests and blobs."""
