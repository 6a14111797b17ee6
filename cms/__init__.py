"""cms: a cloud management system on libvirt.

Layout (pure decisions apart from I/O):
  cms.config       the one configuration loader (TOML -> typed, validated objects)
  cms.errors       the project's exceptions; libvirt errors are translated in cms.virt only
  cms.messages     the one ZeroMQ message schema, shared by the daemon and the client
  cms.virt         the one libvirt layer (the only code that imports libvirt)
  cms.policy       scaling policies: pure functions over plain data
  cms.placement    placement algorithms: pure functions over plain data
  cms.autoscaler   the reconcile-loop daemon and its ZeroMQ publisher
  cms.api          the Falcon REST API served by gunicorn
"""

__version__ = "0.1.0"
