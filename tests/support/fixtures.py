"""Session fixtures for a real local registry and the test images pushed to it."""
