"""Operator REST of runtimed, one module per resource group."""
