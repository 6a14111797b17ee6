"""cms power key: the replica powers off cleanly when its ACPI power button is pressed.

cms removes a replica gracefully first: libvirt's virDomainShutdown presses the VM's (virtual)
ACPI power button, and cms waits ``shutdown_timeout_s`` for the VM to stop before pulling the
plug. The image has no logind and no acpid, so before this nothing acted on the press: every
removal waited out the whole timeout, then destroyed the VM. This watches the kernel's
"Power Button" input devices (the ``button`` driver, read through ``evdev``; the unit loads
both after the guest server is serving, so the boot does not wait for them) and, on a press,
runs ``systemctl poweroff``: the guest server gets SIGTERM, the disk is unmounted clean, and
QEMU exits, in a second or two.

Standard library only, started with ``python3 -S`` as the server is. Installed by the
golden_image role with cms-powerkey.service.
"""

from __future__ import annotations

import os
import select
import struct
import sys
import time

EV_KEY, KEY_POWER = 0x01, 116
EVENT = struct.Struct("llHHi")          # struct input_event: time (2 longs), type, code, value
INPUT = "/sys/class/input"
FIND_FOR_S = 5.0                        # the driver may still be binding when the unit starts


def power_buttons() -> list[str]:
    """The /dev/input/event* nodes whose device is named "Power Button"."""
    found = []
    for n in sorted(os.listdir(INPUT)):
        if not n.startswith("event"):
            continue
        try:
            with open(f"{INPUT}/{n}/device/name") as f:
                if f.read().strip() == "Power Button":
                    found.append(f"/dev/input/{n}")
        except OSError:
            continue
    return found


def pressed(data: bytes) -> bool:
    """Whether a read of input events holds a press of the power key."""
    for off in range(0, len(data) - EVENT.size + 1, EVENT.size):
        _s, _us, etype, code, value = EVENT.unpack_from(data, off)
        if etype == EV_KEY and code == KEY_POWER and value == 1:
            return True
    return False


def main() -> int:
    end = time.monotonic() + FIND_FOR_S
    while not (devices := power_buttons()) and time.monotonic() < end:
        time.sleep(0.1)
    if not devices:
        print("cms-powerkey: no power button input device: a graceful shutdown will time out", flush=True)
        return 0
    fds = [os.open(d, os.O_RDONLY) for d in devices]
    print(f"cms-powerkey: watching {', '.join(devices)}", flush=True)
    while True:
        ready, _, _ = select.select(fds, [], [])
        for fd in ready:
            if pressed(os.read(fd, EVENT.size * 64)):
                print("cms-powerkey: power button pressed: powering off", flush=True)
                os.execv("/bin/systemctl", ["systemctl", "--no-block", "poweroff"])


if __name__ == "__main__":
    sys.exit(main())
