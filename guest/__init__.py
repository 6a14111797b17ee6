"""What runs inside a replica VM: the guest server, its unit, and the work contract
(``guest.cms_work``) that the host-side client imports from here.

The server itself is run, not imported from this package: as ``python3 -m cms_guest_server``
with /usr/lib/cms-guest on the path in the image, or as a script from a checkout; either
way its own directory is on the path and it imports its modules (``cms_prefork``,
``cms_http``, ``cms_work``) directly. The client needs only ``guest.cms_work``.
"""
