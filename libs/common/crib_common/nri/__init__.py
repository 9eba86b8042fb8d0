"""Generated NRI types (see ../nri_proto/ORIGIN.md). Do not edit."""
