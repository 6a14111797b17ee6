"""`cms`: the command-line client of the REST API (urllib only).

    cms [--url URL] [--token T] [--json] COMMAND
      vm create NAME TYPE [--image ID] | vm query VMID | vm destroy VMID | vm list
      types | images | pm list | pm query PMID | group status [NAME] | group scale NAME N

The URL comes from --url, else $CMS_URL, else http://<api.bind of the configuration>.
The token (for `group scale`) from --token, else $CMS_TOKEN, else api.token of the
configuration when readable. Exit codes: 0 done, 1 the call failed, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class Failure(Exception):
    pass


def _default_url_and_token() -> tuple[str, str]:
    try:
        from cms import config as cms_config
        cfg = cms_config.load()
        bind, token = cfg.api.bind, cfg.api.token
    except Exception:  # noqa: BLE001 - an unreadable config just means the built-in default
        bind, token = "127.0.0.1:8080", ""
    host = bind.rsplit(":", 1)
    if host[0] in ("0.0.0.0", "", "::", "[::]"):
        bind = f"127.0.0.1:{host[-1]}"
    return f"http://{bind}", token


class Client:
    def __init__(self, url: str, token: str = "", timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None) -> Any:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())
                msg = err.get("description") or err.get("title") or err.get("error") or str(err)
            except Exception:  # noqa: BLE001
                msg = exc.reason
            raise Failure(f"{method} {path}: HTTP {exc.code}: {msg}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Failure(f"cannot reach the API at {self.url}: {reason}") from None
        except json.JSONDecodeError:
            raise Failure(f"{method} {path}: the answer is not JSON") from None


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line([c.upper() for c in cols])] + [line(r) for r in cells])


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cms", description="Client of the cms REST API.")
    ap.add_argument("--url", help="API base URL (default: $CMS_URL or http://<api.bind>)")
    ap.add_argument("--token", help="bearer token for mutating calls (default: $CMS_TOKEN or api.token)")
    ap.add_argument("--json", action="store_true", help="print the raw JSON answer")
    sub = ap.add_subparsers(dest="cmd", required=True)
    vm = sub.add_parser("vm", help="virtual machines").add_subparsers(dest="sub", required=True)
    p = vm.add_parser("create", help="create a VM")
    p.add_argument("name")
    p.add_argument("type", type=int, help="instance type (tid)")
    p.add_argument("--image", type=int, help="image id (default: the first image)")
    for n in ("query", "destroy"):
        vm.add_parser(n).add_argument("vmid", type=int)
    vm.add_parser("list")
    sub.add_parser("types", help="instance types")
    sub.add_parser("images", help="images")
    pm = sub.add_parser("pm", help="physical machines").add_subparsers(dest="sub", required=True)
    pm.add_parser("list")
    pm.add_parser("query").add_argument("pmid", type=int)
    g = sub.add_parser("group", help="replica groups").add_subparsers(dest="sub", required=True)
    g.add_parser("status").add_argument("name", nargs="?")
    p = g.add_parser("scale")
    p.add_argument("name")
    p.add_argument("replicas", type=int)
    return ap


def run(a: argparse.Namespace, c: Client) -> tuple[Any, str]:
    """(the JSON answer, its human rendering); Failure when the call failed."""
    if a.cmd == "vm" and a.sub == "create":
        params = {"name": a.name, "instance_type": a.type}
        if a.image is not None:
            params["image_id"] = a.image
        r = c.call("GET", "/vm/create", params)
        if not r.get("vmid"):
            raise Failure(f"VM {a.name!r} was not created (the server answered vmid 0: bad type or image, "
                          f"duplicate name, or no room)")
        return r, f"created VM {r['vmid']}"
    if a.cmd == "vm" and a.sub == "query":
        r = c.call("GET", "/vm/query", {"vmid": a.vmid})
        if not r.get("vmid"):
            raise Failure(f"no VM {a.vmid}")
        return r, table([r], ["vmid", "name", "instance_type", "pmid"])
    if a.cmd == "vm" and a.sub == "destroy":
        r = c.call("GET", "/vm/destroy", {"vmid": a.vmid})
        if r.get("status") != 1:
            raise Failure(f"VM {a.vmid} was not destroyed (unknown VM, or its host is down)")
        return r, f"destroyed VM {a.vmid}"
    if a.cmd == "vm" and a.sub == "list":
        r = c.call("GET", "/v1/vms")
        return r, table(r["vms"], ["vmid", "name", "instance_type", "pmid", "host", "domain", "state"])
    if a.cmd == "types":
        r = c.call("GET", "/vm/types")
        return r, table(r["types"], ["tid", "cpu", "ram", "disk"])
    if a.cmd == "images":
        r = c.call("GET", "/image/list")
        return r, table(r["images"], ["id", "name"])
    if a.cmd == "pm" and a.sub == "list":
        r = c.call("GET", "/v1/hosts")
        rows = [{"pmid": h["pmid"], "name": h["name"], "uri": h["uri"], "up": "up" if h["up"] else "DOWN",
                 "cpu": h["capacity"]["cpu"], "ram": h["capacity"]["ram"], "free_cpu": h["free"]["cpu"],
                 "free_ram": h["free"]["ram"], "vms": h["vms"]} for h in r["hosts"]]
        return r, table(rows, ["pmid", "name", "up", "cpu", "ram", "free_cpu", "free_ram", "vms", "uri"])
    if a.cmd == "pm" and a.sub == "query":
        r = c.call("GET", "/pm/query", {"pmid": a.pmid})
        if not r.get("pmid"):
            raise Failure(f"no machine {a.pmid}")
        rows = [{"": k, **r[k]} for k in ("capacity", "free")]
        return r, f"pmid {r['pmid']}, {r['vms']} VMs\n" + table(rows, ["", "cpu", "ram", "disk"])
    if a.cmd == "group" and a.sub == "status":
        r = c.call("GET", f"/v1/groups/{urllib.parse.quote(a.name, safe='')}" if a.name else "/v1/groups")
        groups = [r] if a.name else r["groups"]
        out = []
        for g in groups:
            ov = g.get("desired_override")
            out.append(f"group {g['name']}: {len(g['replicas'])} replicas (min {g['min']}, max {g['max']}, "
                       f"policy {g['policy']['name']}" + (f", asked {ov['replicas']}" if ov else "") + ")")
            rows = [{**x, "cpu": f"{x['cpu'][-1] * 100:.0f}%" if x["cpu"] else "-"} for x in g["replicas"]]
            out.append(table(rows, ["name", "host", "state", "vcpus", "memory_mib", "cpu"]))
        return r, "\n".join(out)
    if a.cmd == "group" and a.sub == "scale":
        r = c.call("POST", f"/v1/groups/{urllib.parse.quote(a.name, safe='')}/scale", body={"replicas": a.replicas})
        return r, f"asked group {a.name} for {a.replicas} replicas (event {r['event_id']}); the autoscaler applies it on its " \
                  "next tick, and its policy goes on scaling from there"
    raise Failure("unknown command")


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    a = ap.parse_args(argv)      # usage errors: argparse prints usage and exits 2
    url, token = _default_url_and_token()
    c = Client(a.url or os.environ.get("CMS_URL") or url, a.token or os.environ.get("CMS_TOKEN") or token)
    try:
        r, human = run(a, c)
    except Failure as exc:
        print(f"cms: {exc}", file=sys.stderr)
        return 1
    except (KeyError, TypeError, AttributeError) as exc:
        print(f"cms: unexpected answer from {c.url}: missing {exc}", file=sys.stderr)
        return 1
    print(json.dumps(r) if a.json else human)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
