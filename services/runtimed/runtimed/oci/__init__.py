"""OCI runtimes (runc, crun, ...) behind one small interface, and the bundles they run."""
