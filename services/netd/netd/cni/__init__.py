"""CNI: configuration loading, plugin invocation and chain execution (CNI spec 1.1.0)."""
