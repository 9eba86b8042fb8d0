"""Operator REST of imaged, one module per resource group."""
