"""Pydantic models of each daemon's HTTP API, shared by server and client."""
