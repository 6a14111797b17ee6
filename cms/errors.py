"""The project's own exceptions.

Nothing above cms.virt catches libvirt.libvirtError: the libvirt layer turns every
libvirt failure into one of these, naming the host and the object concerned.
"""


class CmsError(Exception):
    """Base of every error cms raises on purpose. Its text is meant for an operator."""


class ConfigError(CmsError):
    """The configuration file is missing, unreadable or invalid (exit code 2)."""


class VirtError(CmsError):
    """A libvirt call failed. `host` names the hypervisor, `obj` the domain/volume/pool."""

    def __init__(self, message: str, host: str = "", obj: str = "") -> None:
        self.host = host
        self.obj = obj
        where = ", ".join(p for p in (f"host {host}" if host else "", obj) if p)
        super().__init__(f"{message} ({where})" if where else message)


class HostUnreachable(VirtError):
    """The libvirt URI does not answer."""


class NotFound(VirtError):
    """The domain, volume, pool or network does not exist."""


class AlreadyExists(VirtError):
    """A domain or volume of that name exists already."""


class Unsupported(VirtError):
    """The host's hypervisor driver cannot do this at all (e.g. migrate on the test driver)."""


class NoSpace(VirtError):
    """The storage pool or host has no room for the request."""


class ImageMissing(VirtError):
    """The golden image (or its kernel/initrd) is not where the configuration says."""


class BeyondMaximum(CmsError):
    """A resize past the vCPUs or memory the domain was defined with at most."""


class PlacementError(CmsError):
    """No host can take the request."""


class MessageError(CmsError):
    """A ZeroMQ message does not follow cms.messages' schema."""


class NotLeader(CmsError):
    """This controller may not act now: it is not the leader, or its lease was not renewed in time."""
