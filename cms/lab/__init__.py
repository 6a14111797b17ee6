"""Tools for trying cms on real hypervisors on one machine, shared by bench/, tests/ and scripts/.

- cms.lab.realstack: the local libvirtd as a test host: a config with a private pool, the
  golden image's path, cleanup of pools, bounded waits and process stops.
"""
