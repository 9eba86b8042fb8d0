"""OCI image concerns: references, media types, manifests and indexes, platform matching."""
