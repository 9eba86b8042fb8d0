"""What imaged keeps on disk: content-addressed blobs, unpacked layers, snapshots, metadata."""
