"""Generated CRI types (see ../proto/ORIGIN.md). Do not edit."""
