"""What every crib daemon shares: CRI types, errors, settings, logging, state, HTTP.

Import from the submodules: `crib_common.errors`, `crib_common.settings`,
`crib_common.client`, `crib_common.server`, `crib_common.state`, `crib_common.logging`,
`crib_common.cri.runtime.v1` (generated), `crib_common.models.<daemon>`.
"""

from .version import CRI_API_VERSION, RUNTIME_NAME, __version__

__all__ = ["CRI_API_VERSION", "RUNTIME_NAME", "__version__"]
