"""The host lifecycle: a hypervisor's states, the moves between them, and one pure step.

Beside the replica lifecycle (cms.autoscaler.lifecycle), kept as small as vSphere HA's and
Proxmox's: detection is a clock, not a guess, and a host that was declared down is fenced
before anything runs on it again::

    UP ──(missed a tick)──> SUSPECT ──(no answer for host_down_s)──> DOWN
     ^                         │                                      │ (answers again)
     └────(answers again)──────┘                                      v
     ^                                                            FENCING ──(silent host_down_s)──> DOWN
     └──────────(its lost domains destroyed: fenced)──────────────────┘

* UP: it answered this tick; placement may use it.
* SUSPECT: it missed at least one tick, but not yet for ``host_down_s``. Its replicas keep
  their state (none is replaced on one miss); a group with replicas there holds scale-in.
* DOWN: no answer for ``host_down_s``. Its replicas are declared lost and replaced; nothing
  is placed there.
* FENCING: it answers again. Before anything else runs there, the controller destroys what
  it declared lost on it; only then is the host UP again.

``step`` is the one way a host's state changes: what this tick saw in, the new record and
its events out (``host_suspect``, ``host_down``, ``host_fencing``, ``host_fenced``,
``host_up``, each with its reason): every move is an event, so the newest host event says a
host's state to any process that reads the journal (``STATE_OF``). The moves are the table
``RULES``; no clock, no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class HostState(str, enum.Enum):
    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"
    FENCING = "fencing"

    def __str__(self) -> str:
        return self.value


class Seen(str, enum.Enum):
    """What one tick saw of a host, as ``step`` classifies it."""
    ANSWERED = "answered"        # its listing came back in time
    MISSED = "missed"            # it did not answer, for less than host_down_s so far
    SILENT = "silent"            # it has not answered for host_down_s or longer
    FENCED = "fenced"            # it answered, and its lost domains are destroyed (only while FENCING)


H = HostState

# (state, what the tick saw) -> (new state, the events of that move, in order). A pair not
# listed cannot happen (FENCED only comes while FENCING).
RULES: dict[tuple[HostState, Seen], tuple[HostState, tuple[str, ...]]] = {
    (H.UP, Seen.ANSWERED): (H.UP, ()),
    (H.UP, Seen.MISSED): (H.SUSPECT, ("host_suspect",)),
    (H.UP, Seen.SILENT): (H.SUSPECT, ("host_suspect",)),     # one tick longer than host_down_s: still one miss first
    (H.SUSPECT, Seen.ANSWERED): (H.UP, ("host_up",)),
    (H.SUSPECT, Seen.MISSED): (H.SUSPECT, ()),
    (H.SUSPECT, Seen.SILENT): (H.DOWN, ("host_down",)),
    (H.DOWN, Seen.ANSWERED): (H.FENCING, ("host_fencing",)),
    (H.DOWN, Seen.MISSED): (H.DOWN, ()),
    (H.DOWN, Seen.SILENT): (H.DOWN, ()),
    (H.FENCING, Seen.ANSWERED): (H.FENCING, ()),             # the fence is still under way
    (H.FENCING, Seen.MISSED): (H.FENCING, ()),                # one miss: as for an up host, no verdict yet
    (H.FENCING, Seen.SILENT): (H.DOWN, ("host_down",)),
    (H.FENCING, Seen.FENCED): (H.UP, ("host_fenced", "host_up")),
}

TRANSITIONS: dict[HostState, frozenset[HostState]] = {
    s: frozenset(dst for (src, _seen), (dst, _ev) in RULES.items() if src == s and dst != s) for s in HostState}

# The state each event leaves a host in (the API and the CLI read host states from events).
STATE_OF = {"host_suspect": H.SUSPECT, "host_down": H.DOWN, "host_fencing": H.FENCING, "host_up": H.UP}

# Placement may put a new VM there.
PLACEABLE = frozenset({H.UP})
# Its replicas are declared lost (announced failed, replaced elsewhere).
LOST = frozenset({H.DOWN, H.FENCING})


@dataclass(frozen=True)
class HostTrack:
    """What the controller knows about one host's liveness."""
    name: str
    state: HostState = H.UP
    since: float = 0.0              # when it entered its state
    last_answer: float = 0.0        # when it last answered (the daemon's start counts as one)
    misses: int = 0                 # ticks in a row without an answer
    why: str = ""                   # why the last miss (the listing's error)

    @classmethod
    def new(cls, name: str, now: float) -> "HostTrack":
        return cls(name, H.UP, now, now)


@dataclass(frozen=True)
class HostEvent:
    kind: str                       # host_suspect | host_down | host_fencing | host_fenced | host_up
    host: str
    reason: str
    names: tuple[str, ...] = ()     # host_fenced: the domains destroyed there


def classify(t: HostTrack, answered: bool, now: float, host_down_s: float, fenced: bool = False) -> Seen:
    if answered:
        return Seen.FENCED if fenced and t.state == H.FENCING else Seen.ANSWERED
    return Seen.SILENT if now - t.last_answer >= host_down_s else Seen.MISSED


def step(t: HostTrack, answered: bool, now: float, host_down_s: float, *, why: str = "",
         fenced: tuple[str, ...] | None = None) -> tuple[HostTrack, tuple[HostEvent, ...]]:
    """One tick of one host: ``answered`` (its listing came back within its deadline),
    ``why`` it did not, and ``fenced`` (the names of the lost domains destroyed on it, once
    that is done; None while it is not). Returns the new record and the events of the move."""
    seen = classify(t, answered, now, host_down_s, fenced is not None)
    dst, kinds = RULES[(t.state, seen)]
    if answered:
        nxt = replace(t, state=dst, last_answer=now, misses=0, why="")
    else:
        nxt = replace(t, state=dst, misses=t.misses + 1, why=why or t.why)
    if dst != t.state:
        nxt = replace(nxt, since=now)
    names = tuple(fenced or ())
    return nxt, tuple(HostEvent(k, t.name, _reason(k, t, nxt, now, host_down_s, names), names if k == "host_fenced" else ())
                      for k in kinds)


def _reason(kind: str, before: HostTrack, after: HostTrack, now: float, host_down_s: float,
            names: tuple[str, ...]) -> str:
    silent = now - before.last_answer
    why = f": {after.why}" if after.why else ""
    if kind == "host_suspect":
        return f"host {before.name} did not answer this tick{why}"
    if kind == "host_down":
        if before.state == H.FENCING:
            return f"host {before.name} stopped answering again while being fenced{why}"
        return f"host {before.name} has not answered for {silent:.1f} s (host_down_s {host_down_s:g}){why}"
    if kind == "host_fencing":
        return (f"host {before.name} answers again after {now - before.last_answer:.1f} s; fencing what was "
                "declared lost there before anything else runs on it")
    if kind == "host_fenced":
        if not names:
            return f"host {before.name} answers again; nothing declared lost was left there"
        return (f"host {before.name} answers again; the {len(names)} domain(s) declared lost there are "
                f"destroyed: {', '.join(names)}")
    if before.state == H.SUSPECT:
        return f"host {before.name} answers again after {before.misses} missed tick(s)"
    return f"host {before.name} is fenced and up again"
