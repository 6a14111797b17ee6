"""scripts/lab.sh: the multi-host lab's command line (cms.lab.hosts makes and removes a lab,
cms.lab.controllers adds controllers and etcd, cms.lab.outage loses a host and brings it back).

    python -m cms.lab.cli [--name cmslab] [--subnet 90] up N [--cpus C] [--controllers M [--etcd 3]] | down | status
    python -m cms.lab.cli [--name cmslab] [--subnet 90] cut-etcd|heal-etcd C   (cms.lab.controllers)
    python -m cms.lab.cli [--name cmslab] [--subnet 90] kill|cut|fence|revive N   (cms.lab.outage)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from cms.errors import CmsError
from cms.lab import controllers, outage
from cms.lab.hosts import Lab


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab.sh", description="A multi-host cms lab on this machine "
                                 "(network + mount namespaces, one libvirtd each).")
    ap.add_argument("--name", default="cmslab", help="lab name: its namespaces, links and directory (default cmslab)")
    ap.add_argument("--subnet", type=int, default=90, help="the lab uses 169.254.SUBNET.0/24 (default 90)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="make N hosts (removing an earlier lab of the same name first)")
    p.add_argument("n", type=int)
    p.add_argument("--cpus", type=int, default=-1,
                   help="each host's cpus in the fragment (default: this machine's CPUs shared out, at least 1)")
    p.add_argument("--controllers", type=int, default=0, metavar="M",
                   help="also M controllers, each in its own network namespace, and an etcd cluster (default 0)")
    p.add_argument("--etcd", type=int, default=3, metavar="E", help="etcd members with --controllers (default 3)")
    for cmd, what in (("cut-etcd", "cut off from etcd (it still reaches the hosts)"), ("heal-etcd", "etcd back")):
        sub.add_parser(cmd, help=f"controller C (2 or c2): {what}").add_argument("controller")
    sub.add_parser("down", help="remove the lab")
    sub.add_parser("status", help="what of the lab exists")
    for cmd, what in (("kill", "a power cut: its libvirtd and QEMUs killed, its link down"),
                      ("cut", "a partition: its link down, libvirtd and QEMUs left running"),
                      ("fence", "what a fence agent does: its libvirtd and QEMUs killed (hosts[].fence_command)"),
                      ("revive", "its link up; its libvirtd started again if it was killed")):
        sub.add_parser(cmd, help=f"host N (2 or hv2): {what}").add_argument("host")
    a = ap.parse_args(argv)
    try:
        lab = Lab(a.name, a.subnet)
        if a.cmd == "up":
            hosts = lab.up(a.n)
            cpus = a.cpus if a.cpus >= 0 else max(1, (os.cpu_count() or 1) // a.n)
            frag = lab.config_fragment(hosts, cpus)
            (lab.root / "cms.toml").write_text(frag)
            print(f"lab {a.name}: bridge {lab.bridge} at {lab.gateway}/24, shared storage {lab.root}")
            for h in hosts:
                print(f"  {h.name}: netns {h.netns}, address {h.address}, libvirtd pid {h.pid}, "
                      f"host_uuid {h.host_uuid}, {h.uri}, first define {h.first_define_s:.2f} s")
                if h.caps_note:
                    print(f"  {h.name}: {h.caps_note}")
            print(f"cms.toml fragment (also in {lab.root / 'cms.toml'}):\n")
            print(frag, end="")
            if a.controllers:
                ctl = controllers.Controllers(lab)
                made, etcd = ctl.up(a.controllers, a.etcd)
                controllers.write_configs(ctl, made, etcd, frag)
                print("\n" + controllers.describe(ctl, made, etcd))
        elif a.cmd in ("cut-etcd", "heal-etcd"):
            ctl = controllers.Controllers(lab)
            i = ctl.index(a.controller)
            print(f"lab {a.name}: " + "; ".join(ctl.cut(i) if a.cmd == "cut-etcd" else ctl.heal(i)))
        elif a.cmd == "down":
            removed = lab.down()
            print(f"lab {a.name}: " + ("removed " + "; ".join(removed) if removed else "nothing to remove"))
        elif a.cmd == "status":
            print(json.dumps(lab.status(), indent=1))
        else:
            i = outage.host_index(lab, a.host)
            print(f"lab {a.name}: hv{i}: " + "; ".join(outage.ACTIONS[a.cmd](lab, i)))
    except CmsError as exc:   # LabError, EtcdError
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
