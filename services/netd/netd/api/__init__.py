"""netd's operator REST, one module per resource group."""
