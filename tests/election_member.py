"""One controller's election alone, as a process a test can SIGKILL: steps every quarter second
and prints its role and term on each step (``python -m tests.election_member NAME TTL URL...``).
It stops by itself after two minutes, so a test that fails leaves nothing running for long."""

from __future__ import annotations

import sys
import time

from cms.config import CoordinationConfig
from cms.coordination import Election
from cms.leadership import Leader


def main(argv: list[str]) -> None:
    name, ttl, *urls = argv
    e = Election(CoordinationConfig(url=urls, name=name, lease_ttl_s=int(ttl)), Leader(name))
    e.start()
    end = time.monotonic() + 120
    while time.monotonic() < end:
        print(e.step(), e.term, flush=True)
        time.sleep(0.25)
    e.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
