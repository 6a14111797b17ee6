"""cms's one libvirt layer: the only package that imports libvirt.

- cms.virt.xml: pure XML rendering/parsing (domain, overlay volume, pool, owner metadata)
- cms.virt.host: Host, one per libvirt URI: the connection, events, error translation, the
  call observer (``set_call_observer``), capacity; what it can do is split by concern into
  cms.virt.storage (pools, volumes), cms.virt.domains (define, clone-and-start, remove),
  cms.virt.stats (the owned-domain listing in one bulk call) and cms.virt.migration
- cms.virt.guest: Guest, one domain's own operations (power, parking, metadata, resize)
- cms.virt.fleet: Fleet, the configured hosts; builds a VM from the config on a given host
  (``build_on``) and lists what runs (``list_domains`` -> Listing). Choosing the host and
  the spawn lock are cms.scheduler's.
"""

from cms.virt.fleet import Fleet, Listing, Spawned, replica_name
from cms.virt.guest import Guest
from cms.virt.host import Capacity, DomainEvent, Host, error_name, set_call_observer, start_event_loop
from cms.virt.stats import OwnedDomain
from cms.virt.xml import DomainSpec, OwnerMeta

__all__ = ["Fleet", "Listing", "Spawned", "replica_name", "Guest", "Capacity", "DomainEvent", "Host",
           "OwnedDomain", "error_name", "set_call_observer", "start_event_loop", "DomainSpec", "OwnerMeta"]
