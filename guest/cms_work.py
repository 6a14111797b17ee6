"""The work one request costs: the one definition the guest server and every client share.

``GET /work?payload=P&cost=N`` asks a replica for ``result(P, N)``: PBKDF2-HMAC-SHA256 of
the payload (UTF-8) with the fixed salt SALT and N iterations, in hex. The cost is the
knob that makes a request CPU-bound by a chosen amount; a client computes the same result
itself to check every answer. ``check`` says which requests are valid.

Where it lives, and why here: the guest server runs in the golden image on the image's own
python3 with nothing but the standard library, so this definition must be stdlib-only and
must travel into the image beside the server. Hence this one file, guest/cms_work.py:

* the golden_image role copies it next to cms_guest_server.py and the server's other
  modules into /usr/lib/cms-guest (the unit's PYTHONPATH) and hashes it into the image's
  cache key;
* the server's modules import it as ``cms_work``: the server's own directory is on the
  path, in the image and when run as a script from a checkout;
* the load client (client/), the test doubles (tests/doubles.py) and the benches import it
  as ``guest.cms_work`` (``guest`` is a package in pyproject.toml).

Changing anything here changes what every replica computes: rebuild the image
(``make image``) so replicas and clients agree.
"""

from __future__ import annotations

import hashlib

SALT = b"cms-guest"
DIGEST = "sha256"
MIN_COST = 1
MAX_COST = 1_000_000
MAX_PAYLOAD_BYTES = 4096


class WorkError(ValueError):
    """A work request the server refuses (HTTP 400); the message says why."""


def result(payload: str, cost: int) -> str:
    """What a replica answers for this payload and cost."""
    return hashlib.pbkdf2_hmac(DIGEST, payload.encode("utf-8", "surrogatepass"), SALT, cost).hex()


def check(payload: object, cost: object) -> tuple[str, int]:
    """A work request's two fields, validated: (payload, cost), or WorkError.

    The cost may come as a decimal string (the query form) or as an integer (JSON).
    """
    if payload is None:
        raise WorkError(f"missing 'payload' (a string of at most {MAX_PAYLOAD_BYTES} bytes)")
    if not isinstance(payload, str):
        raise WorkError("'payload' must be a string")
    if len(payload.encode("utf-8", "surrogatepass")) > MAX_PAYLOAD_BYTES:
        raise WorkError(f"'payload' is longer than {MAX_PAYLOAD_BYTES} bytes")
    if cost is None:
        raise WorkError(f"missing 'cost' (an integer from {MIN_COST} to {MAX_COST})")
    if isinstance(cost, str):
        try:
            cost = int(cost.strip(), 10)
        except ValueError:
            raise WorkError(f"'cost' must be an integer, not {cost[:40]!r}") from None
    if isinstance(cost, bool) or not isinstance(cost, int):
        raise WorkError("'cost' must be an integer")
    if not MIN_COST <= cost <= MAX_COST:
        raise WorkError(f"'cost' must be from {MIN_COST} to {MAX_COST}, not {cost}")
    return payload, cost
