"""The `crib` operator CLI."""
