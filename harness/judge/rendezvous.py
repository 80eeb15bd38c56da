"""Where the ranks met, from what the probe recorded as each process entered
``init_process_group`` (``processes/*.json``: ``rendezvous``).

Two findings, on any rung, the first already where the job succeeds:

- **A rank that rendezvous on a host that does not serve the store.** Rank 0 serves the store
  every other rank connects to; a rank whose address is its own loopback (``localhost``,
  ``127.0.0.1``), or another host's name, while rank 0 runs elsewhere, waits for a master that
  is not there once hosts are separate machines. ``local`` gives each host its own network
  namespace, so such a job fails there already and this finding names why; where ``local`` falls
  back to one loopback for every host (no ``ip``, no namespaces) the job works, and the finding
  is the only sign.
- **A rendezvous that never completed**: which ranks joined, which are missing, the address each
  used against the one the contract gave its host.
- **A rank or world size of the job's own making** that differs from the one its launcher gave
  it (``RANK``, ``WORLD_SIZE``): ``WORLD_SIZE`` read as a number of nodes where the launcher means
  processes (``world-size-semantics``), a rank computed from the host's index alone
  (``rank-assignment``). Only processes the launcher started as ranks are judged; the children a
  rank starts for itself inherit its variables without being its rank.

Addresses that are neither a loopback nor a host name of the job (an IP, a fully qualified name)
are never judged: the check cannot tell where they lead, and a false alarm is worse than none.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from harness.judge.findings import ECHOES, Finding, Severity
from harness.judge.protocol import CheckContext
from harness.record.run_record import RunRecord

_LOOPBACK = ("localhost", "0.0.0.0", "::1", "ip6-localhost")


def _is_loopback(addr: str) -> bool:
    return addr in _LOOPBACK or addr.startswith("127.")


def _given(record: RunRecord, host: str) -> tuple[str | None, str]:
    """The address the contract gave a host (None where it gave none), and the evidence line."""
    env = record.read_json(f"hosts/{host}/received/env.json") or {}
    if "MASTER_ADDR" not in env:
        return None, "the contract gave no MASTER_ADDR"
    return env["MASTER_ADDR"], f"the contract gave {env['MASTER_ADDR']}:{env.get('MASTER_PORT', '?')}"


def _shown(endpoint: dict[str, Any] | None) -> str:
    if not endpoint:
        return "an endpoint the probe cannot read (a file or custom store)"
    return f"{endpoint.get('addr')}:{endpoint.get('port')} ({endpoint.get('via')})"


def _worlds(record: RunRecord) -> list[list[dict[str, Any]]]:
    """The processes that entered a rendezvous, one list per process group of the job: grouped by
    world size, and apart where a rank number repeats (separate jobs on each host)."""
    by_size: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for process in record.processes():
        rendezvous = process.get("rendezvous")
        if isinstance(rendezvous, dict):
            by_size[int(rendezvous.get("world_size", -1))].append(process)
    worlds = []
    for processes in by_size.values():
        ranks = [p["rendezvous"].get("rank") for p in processes]
        if len(ranks) == len(set(ranks)):
            worlds.append(sorted(processes, key=lambda p: (int(p["rendezvous"].get("rank", -1)), p["pid"])))
    return worlds


def _wrong_host(record: RunRecord, world: list[dict[str, Any]]) -> list[str]:
    """Evidence for each rank whose address leads to a host other than rank 0's."""
    masters = [p["host"] for p in world if p["rendezvous"].get("rank") == 0]
    master = masters[0] if masters else record.hosts[0]
    evidence = []
    for process in world:
        endpoint = process["rendezvous"].get("endpoint") or {}
        addr = str(endpoint.get("addr") or "")
        given, said = _given(record, process["host"])
        leads_to = process["host"] if _is_loopback(addr) else addr if addr in record.hosts else None
        if addr == given or leads_to is None or leads_to == master:
            continue  # as the contract says (a rung's stand-in address too), or not judged
        evidence.append(
            f"rank {process['rendezvous'].get('rank')} on {process['host']} connects to {_shown(endpoint)}, "
            f"which is {leads_to}"
            + (" (its own loopback)" if _is_loopback(addr) else "")
            + f", at {process['rendezvous'].get('caller')}; {said}"
        )
    if evidence:
        evidence.insert(0, f"rank 0 serves the store on {master}")
    return evidence


def _unfinished(record: RunRecord, world: list[dict[str, Any]]) -> list[str]:
    waiting = [p for p in world if not p["rendezvous"].get("joined_at")]
    if not waiting:
        return []
    size = int(world[0]["rendezvous"].get("world_size", -1))
    arrived = {p["rendezvous"].get("rank") for p in world}
    joined = sorted(p["rendezvous"].get("rank") for p in world if p["rendezvous"].get("joined_at"))
    missing = sorted(set(range(size)) - arrived) if size > 0 else []
    evidence = [
        f"world size {size}: joined {joined or 'none'}, waiting {[p['rendezvous'].get('rank') for p in waiting]}, "
        f"never arrived {missing or 'none'}"
    ]
    for process in waiting:
        rendezvous = process["rendezvous"]
        evidence.append(
            f"rank {rendezvous.get('rank')} on {process['host']} waited since {rendezvous.get('started_at')} "
            f"at {rendezvous.get('caller')} for {_shown(rendezvous.get('endpoint'))}; "
            + _given(record, process["host"])[1]
        )
    return evidence


#: What a rank or world size that disagrees with the launcher's leads to.
_CONSEQUENCES = (*ECHOES, "rendezvous-timeout", "peer-connection-lost")


def _against_launcher(record: RunRecord, ended_badly: bool) -> list[Finding]:
    """A rank number that repeats is what fails first (two processes claim one rank), so it
    leads where the world size is wrong as well."""
    worlds, ranks = [], []
    claimed: dict[tuple[int, int], int] = defaultdict(int)
    for process in record.processes():
        rendezvous, env = process.get("rendezvous"), process.get("env")
        if not isinstance(rendezvous, dict) or not isinstance(env, dict) or process.get("inherited_rank"):
            continue
        given_rank, given_world = str(env.get("RANK", "")), str(env.get("WORLD_SIZE", ""))
        if not (given_rank.isdigit() and given_world.isdigit()):
            continue
        where = f"{process.get('host')} pid {process.get('pid')} at {rendezvous.get('caller')}"
        world, rank = int(rendezvous.get("world_size", -1)), int(rendezvous.get("rank", -1))
        claimed[(world, rank)] += 1
        if world != int(given_world):
            worlds.append(
                f"{where}: world_size={world} where the launcher started WORLD_SIZE={given_world} processes "
                f"(RANK={given_rank})"
            )
        if rank != int(given_rank):
            ranks.append(f"{where}: rank={rank} where the launcher gave RANK={given_rank}")
    severity: Severity = "failure" if ended_badly else "divergence"
    repeated = any(count > 1 for count in claimed.values())
    if worlds and not (ranks and repeated):
        return [
            Finding(
                kind="ranks",
                severity=severity,
                title=f"init_process_group is given a world size other than the launcher's: {worlds[0]}",
                evidence=worlds[:8],
                hint="WORLD_SIZE is the number of processes in the job (torchrun, SageMaker), not of nodes: pass "
                "nothing and let init_process_group read RANK and WORLD_SIZE (env://)",
                cause="world-size-semantics",
                confidence=0.95,
                explains=_CONSEQUENCES,
            )
        ]
    if ranks:
        return [
            Finding(
                kind="ranks",
                severity=severity,
                title=f"init_process_group is given a rank other than the launcher's: {ranks[0]}",
                evidence=ranks[:8],
                hint="take the rank the launcher gives (RANK, or dist.get_rank() after init): a rank computed from "
                "the host's index alone repeats on every process of a host",
                cause="rank-assignment",
                confidence=0.95,
                explains=_CONSEQUENCES,
            )
        ]
    return []


def check_run(record: RunRecord, context: CheckContext) -> list[Finding]:
    ended_badly = record.status != "succeeded"
    findings = _against_launcher(record, ended_badly)
    for world in _worlds(record):
        wrong = _wrong_host(record, world)
        if wrong:
            findings.append(
                Finding(
                    kind="ranks",
                    severity="failure" if ended_badly else "divergence",
                    title="ranks rendezvous on a host that does not serve the store",
                    evidence=wrong,
                    hint="rendezvous where the contract says: MASTER_ADDR and MASTER_PORT as given (env://), "
                    "or the first of SM_HOSTS; never localhost in a job of several hosts",
                    cause="rendezvous-address",
                    confidence=0.9,
                )
            )
        unfinished = _unfinished(record, world) if ended_badly else []
        if unfinished:
            findings.append(
                Finding(
                    kind="hang",
                    severity="failure",
                    title="the rendezvous never completed",
                    evidence=unfinished,
                    hint="every rank must reach init_process_group with the same MASTER_ADDR:MASTER_PORT, "
                    "which rank 0's host serves; check that every host started and the port is reachable",
                    cause="rendezvous-timeout",
                    confidence=0.8,
                )
            )
    return findings
