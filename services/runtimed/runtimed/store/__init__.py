"""Persisted state of runtimed: sandbox and container records in the StateStore."""
