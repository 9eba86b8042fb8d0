"""crib's CRI gateway: a thin, stateless gRPC server forwarding each RPC to its daemon."""
