"""create_app(settings): runtimed's routes, CRI methods and resources."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from crib_common.server import (
    CriTable,
    Health,
    RouteTable,
    create_daemon_app,
    metrics_registry,
)
from crib_common.settings import CribSettings

from .cri import (
    container_attach,
    container_create,
    container_events,
    container_exec,
    container_exec_sync,
    container_list,
    container_remove,
    container_reopen_log,
    container_start,
    container_stats,
    container_status,
    container_stop,
    container_update,
    runtime_config,
    runtime_version,
    sandbox_list,
    sandbox_portforward,
    sandbox_remove,
    sandbox_run,
    sandbox_stats,
    sandbox_status,
    sandbox_stop,
    sandbox_update_resources,
)
from .oci import security
from .api import nri, records
from .daemon import Runtimed
from .messages.listing import forget_item
from .stream_targets import RuntimeTargets
from .streaming import StreamServer

RUNTIME_KEY = web.AppKey("crib_runtime", Runtimed)
STREAM_KEY = web.AppKey("crib_stream_server", StreamServer)

# Exec, Attach and PortForward are registered by the streaming side
# (runtimed/streaming, cri/container_exec.py, container_attach.py, sandbox_portforward.py)
# through `stream_targets.RuntimeTargets`.
_MODULES = (
    sandbox_run, sandbox_stop, sandbox_remove, sandbox_status, sandbox_list, sandbox_stats,
    sandbox_update_resources,
    container_create, container_start, container_stop, container_remove, container_status,
    container_list, container_update, container_reopen_log, container_exec_sync,
    container_stats, container_events, runtime_config,
)


def create_app(settings: CribSettings) -> web.Application:
    try:
        # Before anything listens: a RuntimeDefault that cannot be honoured stops the
        # daemon here rather than running containers with less than they asked for.
        security.install(security.load_security(settings.runtimed))
    except security.SecurityError as exc:
        raise SystemExit(f"crib-runtimed: {exc}") from None
    runtimed = Runtimed(settings)
    runtimed.node.on_drop.append(forget_item)
    cri = CriTable()
    runtime_version.register(cri)
    for module in _MODULES:
        module.register(cri, runtimed)
    stream = StreamServer(settings.runtimed, RuntimeTargets(runtimed))
    for streaming in (container_exec, container_attach, sandbox_portforward):
        streaming.register(cri, stream)
    routes = RouteTable()
    records.register(routes, runtimed)
    nri.register(routes, runtimed)

    async def health() -> Health:
        ready, reason, message, details = runtimed.health()
        defaults = security.current()
        return Health(service="runtimed", ready=ready and runtimed.ready, reason=reason,
                      message=message, details={
                          "handlers": details,
                          # The conformance suite reads the state directory from the
                          # verbose Status (config.stateDir) to check ID-mapped mounts.
                          "state_dir": str(settings.runtimed.run_dir),
                          "user_namespaces": runtimed.node.userns_reason,
                          "cgroups": runtimed.cgroup_info(),
                          "nri": {"enabled": runtimed.node.nri.cfg.enable,
                                  "socket": str(runtimed.node.nri.cfg.socket),
                                  "plugins": runtimed.node.nri.describe()},
                          "apparmor": defaults.apparmor.status().message,
                          "selinux": "enforced labels" if defaults.selinux.enabled()
                          else "not enabled on this host: SELinux options are ignored"})

    app = create_daemon_app("runtimed", routes, cri, health)
    app[RUNTIME_KEY] = runtimed
    app[STREAM_KEY] = stream

    async def runtime_ctx(_app: web.Application) -> AsyncIterator[None]:
        # Recovery runs here, before the socket listens: nobody sees half-loaded state.
        await runtimed.open()
        try:
            yield
        finally:
            await runtimed.close()

    app.cleanup_ctx.append(runtime_ctx)

    async def nri_ctx(app: web.Application) -> AsyncIterator[None]:
        # After recovery, so a plugin's Synchronize sees every pod and container.
        runtimed.node.nri.use_registry(metrics_registry(app))
        await runtimed.node.nri.start()
        try:
            yield
        finally:
            await runtimed.node.nri.close()

    app.cleanup_ctx.append(nri_ctx)
    # After recovery; stopped first, which ends every session and kills its exec processes.
    app.cleanup_ctx.append(stream.context)
    return app
