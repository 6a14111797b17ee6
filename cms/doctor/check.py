"""A doctor check's result, and what the checks share."""

from __future__ import annotations

from dataclasses import dataclass

OK, WARN, FAIL = "ok", "warn", "fail"
FIX_KVM_LOCAL = "run scripts/kvm-device.sh as root: it gives /dev/kvm group kvm and mode 0660, as udev would"


@dataclass(frozen=True)
class Check:
    check: str      # one of CHECKS
    status: str     # ok | warn | fail
    subject: str    # what was looked at: a host's name, a path, an endpoint
    detail: str
    fix: str = ""

    def line(self) -> str:
        label = {OK: "ok", WARN: "WARN", FAIL: "FAIL"}[self.status]
        fix = f" -- fix: {self.fix}" if self.fix and self.status != OK else ""
        return f"{label:<4}  {self.check} {self.subject}: {self.detail}{fix}"


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"
