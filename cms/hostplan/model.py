"""The model host balancing plans over, and the plan it makes: plain data, no I/O, no clock.

A ``Model`` is the cluster as one tick saw it (hosts with their load series, VMs with their
CPU and where they may go, the migrations of the last budget interval, placement's rules);
``Limits`` are the operator's (``[balancer]``). A ``BalancePlan`` is a list of
``BalanceAction``s (migrate, resize, power_off), each with its strategy and its reason in
words, and notes on what was held back and why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from cms.placement import Rules
from cms.policy import window_values

MIGRATE, RESIZE, POWER_OFF = "migrate", "resize", "power_off"


@dataclass(frozen=True)
class Vertical:
    """A VM's opt-in to vertical scaling (``vertical = {...}`` of its group, type or name)."""
    max_vcpus: int
    max_memory_mib: int
    high: float = 0.8
    low: float = 0.2
    window_s: float = 10.0
    window_in_s: float = 60.0


@dataclass(frozen=True)
class VmView:
    name: str
    host: str
    vcpus: int
    memory_mib: int
    cpu: float | None = None                  # mean use of its vCPUs (0..1) over the recent window
    group: str = ""
    movable: bool = True                      # False: counted, never migrated
    migrating: bool = False
    last_moved_at: float | None = None
    left: tuple[tuple[str, float], ...] = ()  # (host, when) it was moved away from
    vertical: Vertical | None = None
    min_vcpus: int = 1                        # the size it was made with: never shrunk below
    min_memory_mib: int = 0
    cpu_series: tuple[tuple[float, float | None], ...] = ()
    mem_series: tuple[tuple[float, float | None], ...] = ()   # share of its memory the guest uses
    last_resized_at: float | None = None
    kernel_mib: int = 0                       # what its host gives it above memory_mib (its guest kernel's share)

    @property
    def cores(self) -> float:
        return (self.cpu or 0.0) * self.vcpus

    @property
    def given_mib(self) -> int:
        """The RAM a host gives it, as placement charges a move: memory_mib and the kernel's share."""
        return self.memory_mib + self.kernel_mib


@dataclass(frozen=True)
class HostView:
    name: str
    cpus: int
    memory_mib: int
    up: bool = True
    series: tuple[tuple[float, float | None], ...] = ()      # host load per tick
    other_cores: float = 0.0                  # busy cores not accounted to cms's VMs
    migrating: bool = False                   # a migration from or to it is running
    last_move_at: float | None = None         # its last migration in or out ended then
    disk_free_bytes: int | None = None
    # what placement charges it now (cms.scheduler's HostLoad); None: the sum of its VMs here
    used_vcpus: int | None = None
    used_memory_mib: int | None = None


@dataclass(frozen=True)
class Limits:
    high: float = 0.8
    window_s: float = 30.0
    relief: bool = True
    consolidate: bool = False
    headroom: float = 0.2
    consolidate_window_s: float = 120.0
    vm_cooldown_s: float = 120.0
    min_stay_s: float = 600.0
    max_moves: int = 2
    budget_interval_s: float = 300.0
    anti_affinity: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Model:
    now: float
    hosts: tuple[HostView, ...]
    vms: tuple[VmView, ...]
    recent_moves: tuple[float, ...] = ()      # when the migrations of the last budget interval started
    rules: Rules = Rules()


@dataclass(frozen=True)
class BalanceAction:
    kind: str              # migrate | resize | power_off
    strategy: str          # relief | anti_affinity | vertical | consolidation
    vm: str                # "" for power_off
    src: str               # the VM's host (power_off: the host)
    dst: str               # migrate: the destination; resize: where it is resized
    reason: str
    vcpus: int = 0         # resize: the new count (0: unchanged)
    memory_mib: int = 0    # resize: the new size (0: unchanged)
    after: str = ""        # a resize that waits for this VM's migration in the same plan
    data: dict = field(default_factory=dict, compare=False)


@dataclass
class BalancePlan:
    actions: list[BalanceAction] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)      # what was held back, and why

    def to_dict(self) -> dict:
        return {"actions": [asdict(a) for a in self.actions], "notes": list(self.notes)}


def pct(x: float) -> str:
    """A share as a whole percentage, for reasons in words."""
    return f"{x * 100:.0f}%"


def sustained_mean(series: Sequence[tuple[float, float | None]], now: float, window_s: float,
                   since: float | None = None) -> float | None:
    """The mean over the last window_s, or None unless samples taken after `since` cover it
    (cms.policy.window_values, the one sustained-window rule)."""
    vals = window_values(series, now, window_s, since)
    return sum(vals) / len(vals) if vals else None
