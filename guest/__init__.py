"""What runs inside a replica VM: the guest server, its unit, and the work contract
(``guest.cms_work``) that the host-side client imports from here."""
