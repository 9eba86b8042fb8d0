"""Typed clients, one per daemon."""
