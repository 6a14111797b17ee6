"""cms's one libvirt layer: the only package that imports libvirt.

- cms.virt.xml: pure XML rendering/parsing (domain, overlay volume, pool, owner metadata)
- cms.virt.calls: how every libvirt call is made: error translation, the call observer
  (``set_call_observer``); cms.virt.states: libvirt's state and event names
- cms.virt.host: Host, one per libvirt URI: the connection, events, capacity; it composes
  one helper per concern, each over its call object: ``host.storage`` (cms.virt.storage:
  pools, volumes), ``host.domains`` (cms.virt.domains: define, clone-and-start, remove),
  ``host.stats`` (cms.virt.stats: the owned-domain listing in one bulk call) and
  ``host.migration`` (cms.virt.migration)
- cms.virt.guest: Guest, one domain's own operations (power, parking, metadata, resize);
  it holds the domain and the call object, not the Host
- cms.virt.fleet: Fleet, the configured hosts; builds a VM from the config on a given host
  (``build_on``) and lists what runs (``list_domains`` -> Listing). Choosing the host and
  the spawn lock are cms.scheduler's.
"""

from cms.virt.calls import error_name, set_call_observer
from cms.virt.fleet import Fleet, Listing, Spawned, replica_name
from cms.virt.guest import Guest
from cms.virt.host import Capacity, DomainEvent, Host, start_event_loop
from cms.virt.stats import OwnedDomain
from cms.virt.xml import DomainSpec, OwnerMeta, kernel_share_mib, vm_share_mib

__all__ = ["kernel_share_mib", "vm_share_mib", "Fleet", "Listing", "Spawned", "replica_name", "Guest", "Capacity", "DomainEvent", "Host",
           "OwnedDomain", "error_name", "set_call_observer", "start_event_loop", "DomainSpec", "OwnerMeta"]
