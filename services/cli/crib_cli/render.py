"""Terminal output for the CLI: tables and pull progress bars drawn with `rich` on a
terminal, plain aligned lines otherwise (pipes, files, scripts: no escape codes, nothing
cut to a terminal's width).

    table(headers, rows)          a table
    pulls_view(pulls)             a rich renderable: a bar per pull and per layer
    pull_line(info), layer_line() the plain-text forms of the same
    size(n), rate(r), eta(s), requester(info)   the shared formatting
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich import box
from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from crib_common.models.imaged import PullInfo, PullLayer

__all__ = ["console", "eta", "is_terminal", "layer_line", "pull_line", "pulls_view", "rate",
           "requester", "size", "table"]

BAR_WIDTH = 30
_STATE_STYLE = {"done": "green", "exists": "green", "failed": "red", "shared": "cyan",
                "downloading": "yellow", "verifying": "magenta", "unpacking": "blue"}


def is_terminal() -> bool:
    return sys.stdout.isatty()


def console() -> Console:
    """A console on stdout (rich picks colours and width from the terminal)."""
    return Console(highlight=False)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a table: rich on a terminal, plain columns joined by two spaces otherwise."""
    if not is_terminal():
        lines = [list(headers)] + [list(r) for r in rows]
        widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
        for line in lines:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        return
    out = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for h in headers:
        out.add_column(h, overflow="fold")
    for r in rows:
        out.add_row(*r)
    console().print(out)


# ---------------------------------------------------------------- formatting
def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1000
    return f"{n} B"


def rate(bytes_per_s: float) -> str:
    return f"{size(int(bytes_per_s))}/s" if bytes_per_s > 0 else "-"


def eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds + 0.5)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def requester(info: PullInfo) -> str:
    """Who a pull is for: "cri pod default/web", "cli", "pause pod kube-system/dns"."""
    who = info.requester.kind
    pod = info.requester.pod
    if pod is not None and (pod.name or pod.namespace):
        who += f" pod {pod.namespace}/{pod.name}" if pod.namespace else f" pod {pod.name}"
    return who


def _pct(done: int, total: int) -> str:
    return f"{100 * done // total}%" if total else ("100%" if done else "0%")


def _layer_state(layer: PullLayer) -> str:
    if layer.state == "shared":
        return f"shared with {layer.shared_with}"
    return layer.state


# ---------------------------------------------------------------- plain lines
def pull_line(info: PullInfo) -> str:
    """One line per pull: id, image, who, state, bytes, rate, ETA (and the error)."""
    line = (f"{info.id} {info.reference} ({requester(info)}): {info.state} "
            f"{size(info.done)}/{size(info.size)} {_pct(info.done, info.size)}")
    if info.state not in ("done", "failed"):
        line += f" {rate(info.rate)} eta {eta(info.eta)}"
    if info.error:
        line += f": {info.error_kind}: {info.error}"
    return line


def layer_line(layer: PullLayer, width: int = BAR_WIDTH) -> str:
    """`<digest12>: <state> [=====>    ] done/size`, the shape `crib pull` always printed."""
    frac = layer.done / layer.size if layer.size else 1.0
    filled = min(int(frac * width), width)
    bar = "=" * filled + (">" if filled < width else "") + " " * max(width - filled - 1, 0)
    return (f"{layer.digest.removeprefix('sha256:')[:12]}: {_layer_state(layer):<11} "
            f"[{bar}] {size(layer.done)}/{size(layer.size)}")


# ---------------------------------------------------------------- rich bars
def pulls_view(pulls: Sequence[PullInfo], title: str = "") -> RenderableType:
    """Per pull: a heading (id, image, who it is for), a bar for the whole and one per
    layer."""
    parts: list[RenderableType] = [Text(title, style="bold")] if title else []
    if not pulls:
        parts.append(Text("no pulls in flight", style="dim"))
    for info in pulls:
        head = Text(f"{info.id} ", style="dim") + Text(info.reference, style="bold")
        head += Text(f"  for {requester(info)}", style="cyan")
        parts.append(head)
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(width=BAR_WIDTH, no_wrap=True)
        grid.add_column(justify="right", no_wrap=True)
        grid.add_column(justify="right", no_wrap=True)
        grid.add_column(no_wrap=True)
        tail = Text(info.state, style=_STATE_STYLE.get(info.state, ""))
        if info.state not in ("done", "failed"):
            tail += Text(f"  {rate(info.rate)}  eta {eta(info.eta)}")
        grid.add_row(Text("  all         "), _bar(info.done, info.size, info.state),
                     _pct(info.done, info.size), f"{size(info.done)}/{size(info.size)}", tail)
        for layer in info.layers:
            grid.add_row(
                Text("  " + layer.digest.removeprefix("sha256:")[:12], style="dim"),
                _bar(layer.done, layer.size, layer.state), _pct(layer.done, layer.size),
                f"{size(layer.done)}/{size(layer.size)}",
                Text(_layer_state(layer), style=_STATE_STYLE.get(layer.state, "")))
        parts.append(grid)
        if info.error:
            parts.append(Text(f"  {info.error_kind}: {info.error}", style="red"))
    return Group(*parts)


def _bar(done: int, total: int, state: str) -> ProgressBar:
    total = max(total, 1)
    return ProgressBar(total=total, completed=min(done, total), width=BAR_WIDTH,
                       pulse=state == "resolving")
