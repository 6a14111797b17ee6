"""Tools for trying cms on real hypervisors on one machine, shared by bench/, tests/ and scripts/.

- cms.lab.realstack: the local libvirtd as a test host: a config with a private pool, the
  golden image's path, cleanup of pools, bounded waits and process stops.
- cms.lab.hosts: a multi-host lab: N hypervisors in network + mount namespaces, each with its
  own libvirtd on a link-local address (``scripts/lab.sh up N``, ``running(n)`` for fixtures).
- cms.lab.outage: losing one of those hosts and bringing it back (``scripts/lab.sh kill|cut|
  fence|revive N``); cms.lab.cli: scripts/lab.sh's command line.
- cms.lab.stack: cms on a lab, for tests and benchmarks.
"""
