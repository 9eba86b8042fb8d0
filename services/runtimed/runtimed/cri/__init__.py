"""One module per CRI RPC runtimed owns, named resource_verb."""
