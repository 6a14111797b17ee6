"""cms's one libvirt layer. Only cms.virt.host imports libvirt.

- cms.virt.xml: pure XML rendering/parsing (domain, overlay volume, pool, owner metadata)
- cms.virt.host: Host, one per libvirt URI (connection, errors, capacity, storage, domains, stats)
- cms.virt.fleet: Fleet, the configured hosts, and the one way to spawn a VM from the config
"""

from cms.virt.fleet import Fleet, Spawned, replica_name
from cms.virt.host import Capacity, DomainEvent, Host, OwnedDomain, start_event_loop
from cms.virt.xml import DomainSpec, OwnerMeta

__all__ = ["Fleet", "Spawned", "replica_name", "Capacity", "DomainEvent", "Host", "OwnedDomain",
           "start_event_loop", "DomainSpec", "OwnerMeta"]
