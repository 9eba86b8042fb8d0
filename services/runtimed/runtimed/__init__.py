"""crib's runtimed: pods and containers through OCI runtimes and conmon."""
