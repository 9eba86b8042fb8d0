"""conmon: the per-container monitor that holds stdio, writes the CRI log, records exits."""
