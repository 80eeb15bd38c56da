"""The ``docker`` rung's network: one bridge network per run, named so that Docker's DNS answers
for it, with each host at an address fixed before its container starts."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress

from docker import DockerClient
from docker.errors import APIError
from docker.models.networks import Network
from docker.types import IPAMConfig, IPAMPool

#: Tries at taking the subnet Docker picked, which a run started at the same time may take first.
_NETWORK_ATTEMPTS = 3


def dns_label(name: str) -> str:
    """``name`` cut to one DNS label (63 characters), a digest of the whole keeping it unique.
    Docker's DNS answers a reverse lookup of a container's address with ``<container>.<network>``;
    with either name longer it answers nothing, and every ``getnameinfo`` on a peer's address
    (c10d's store does one per client connection) waits out the resolver: 10 s each."""
    if len(name) <= 63:
        return name
    return f"{name[:50]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def network_name(run_id: str) -> str:
    return dns_label(f"harness-{run_id}")


def container_name(run_id: str, host: str) -> str:
    return dns_label(f"{run_id}-{host}")


def network_with_addresses(
    client: DockerClient, name: str, labels: dict[str, str], hosts: list[str]
) -> tuple[Network, dict[str, str]]:
    """The run's bridge network and each host's fixed address on it.

    Docker's DNS forgets a container once it exits, and a host that ends first would make its name
    unresolvable to a peer still starting (the toolkit's ``_wait_hostname_resolution`` then retries
    for 15 minutes). Fixed addresses, written into every ``/etc/hosts``, outlive the container as a
    SageMaker instance outlives its program. Docker fixes addresses only on a subnet given at
    creation, so the network is made twice: once for Docker to pick a free subnet from its own
    pools, then on that subnet."""
    for _ in range(_NETWORK_ATTEMPTS - 1):
        with contextlib.suppress(APIError):  # another run took the subnet in between
            return _network_on_a_fixed_subnet(client, name, labels, hosts)
    return _network_on_a_fixed_subnet(client, name, labels, hosts)


def _network_on_a_fixed_subnet(
    client: DockerClient, name: str, labels: dict[str, str], hosts: list[str]
) -> tuple[Network, dict[str, str]]:
    picked = client.networks.create(name, driver="bridge", labels=labels)
    picked.reload()
    config = picked.attrs["IPAM"]["Config"][0]
    picked.remove()
    pool = IPAMPool(subnet=config["Subnet"], gateway=config["Gateway"])
    network = client.networks.create(name, driver="bridge", labels=labels, ipam=IPAMConfig(pool_configs=[pool]))
    free = (str(a) for a in ipaddress.ip_network(config["Subnet"]).hosts() if str(a) != config["Gateway"])
    return network, {host: next(free) for host in hosts}
