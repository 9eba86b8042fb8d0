"""iptables bookkeeping for netd tests: what CNI plugins left in the nat and filter tables.

Plugins remove their per-attachment chains on DEL; the shared top-level chains of portmap
(CNI-HOSTPORT-*) and the jumps to them stay, as they do under containerd. Tests snapshot
the tables first, check nothing of theirs is left, and remove what appeared during the
test and is now empty.
"""

from __future__ import annotations

import shlex
import subprocess

TABLES = ("nat", "filter")


def rules(table: str) -> list[str]:
    """`iptables -S` of one table, one rule or chain per line."""
    out = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if line]


def snapshot() -> dict[str, set[str]]:
    return {t: set(rules(t)) for t in TABLES}


def cni_lines_mentioning(needles: list[str]) -> list[str]:
    """Rules (all tables) mentioning any needle (a subnet prefix, a pod id comment)."""
    found = []
    for table in TABLES:
        for line in rules(table):
            if any(n in line for n in needles):
                found.append(f"{table}: {line}")
    return found


def remove_matching(needles: list[str]) -> None:
    """Delete rules mentioning a needle, then the chains they jumped to if now unused."""
    for table in TABLES:
        targets: set[str] = set()
        for line in rules(table):
            if line.startswith("-A ") and any(n in line for n in needles):
                args = shlex.split(line)
                if "-j" in args:
                    targets.add(args[args.index("-j") + 1])
                subprocess.run(["iptables", "-t", table, "-D", *args[1:]], capture_output=True,
                               check=False)
        for chain in targets:
            if chain.startswith("CNI-") and not chain.startswith("CNI-HOSTPORT"):
                subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True)
                subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True)


def restore_new_shared(before: dict[str, set[str]]) -> None:
    """Remove the CNI chains (with their rules and the jumps to them) that appeared since
    `before`, once no attachment uses them: portmap's CNI-HOSTPORT-MASQ and -SETMARK hold
    static rules, so "in use" means CNI-HOSTPORT-DNAT still dispatches to some pod."""
    for table in TABLES:
        now = rules(table)
        new_chains = [line.split()[1] for line in now
                      if line.startswith("-N CNI-") and line not in before[table]]
        if not new_chains:
            continue

        def used(chain: str) -> bool:
            if chain.startswith("CNI-HOSTPORT-") and chain != "CNI-HOSTPORT-DNAT":
                return any(line.startswith("-A CNI-HOSTPORT-DNAT ") for line in now)
            return any(line.startswith(f"-A {chain} ") for line in now)

        gone = [c for c in new_chains if not used(c)]
        for line in now:
            args = shlex.split(line)
            if line.startswith("-A ") and "-j" in args and args[args.index("-j") + 1] in gone \
                    and args[1] not in gone:
                subprocess.run(["iptables", "-t", table, "-D", *args[1:]], capture_output=True)
        for chain in gone:
            subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True)
        for chain in gone:
            subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True)
