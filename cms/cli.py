"""`cms`: the command-line client of the REST API (urllib only).

    cms [--config F] [--url URL] [--token T] [--timeout S] [--json] COMMAND
      vm create NAME TYPE [--image ID] | vm query VMID | vm destroy VMID | vm list
      types | images [add NAME PATH] | pm list | pm query PMID | pm listvms PMID | group status [NAME] | group scale NAME N
      balance plan | balance run [--wait S]
      doctor [--config F] [--json] [--skip CHECK,...] [--timeout S]   (needs no API; see cms.doctor)
      images import IMAGE_FILE [--config F]   (needs no API: what ./install runs; see cms.images)
      replay --run DIR | --store DB --group G | --trace FILE [--settings F] ...   (needs no API; cms.replay)
      db current | db upgrade                                          (needs no API; see cms.db.command)

The URL comes from --url, else $CMS_URL, else http://<api.bind of the configuration>.
The token (for `group scale`) from --token, else $CMS_TOKEN, else api.token of the
configuration. The configuration is read like every cms command's (--config, $CMS_CONFIG,
/etc/cms/cms.toml, else the embedded defaults); a bad one stops the CLI as it stops the
others. Exit codes: 0 done, 1 the call failed (the server is down, is not the cms API, or
answered a failure), 2 usage or a bad configuration. Every failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class Failure(Exception):
    pass


def _default_url_and_token(config: str | None = None) -> tuple[str, str]:
    from cms import config as cms_config
    cfg = cms_config.load_or_exit(config)      # a bad file: one line, exit 2
    return cfg.api.url, cfg.api.token


class Client:
    def __init__(self, url: str, token: str = "", timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _check_url(self) -> None:
        try:
            parts = urllib.parse.urlsplit(self.url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise Failure(f"bad API URL {self.url!r}: want http://HOST:PORT")

    def call(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None) -> Any:
        self._check_url()
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
            except Exception:  # noqa: BLE001 - an error page that is not ours: its status says enough
                msg = exc.reason
            raise Failure(f"{method} {path}: HTTP {exc.code}: {msg}") from None
        except http.client.RemoteDisconnected:
            raise Failure(f"{self.url} hung up without answering: is it the cms API?") from None
        except http.client.BadStatusLine as exc:
            raise Failure(f"{self.url} does not speak HTTP: it answered {str(exc)[:60]!r}") from None
        except http.client.HTTPException as exc:
            raise Failure(f"{self.url} broke off the HTTP exchange ({type(exc).__name__}): is it the cms API?") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)      # urllib wraps what fails while sending
            if isinstance(reason, TimeoutError):
                raise Failure(f"no answer from {self.url} within {self.timeout:g} s") from None
            if isinstance(reason, (ConnectionResetError, BrokenPipeError)):
                raise Failure(f"{self.url} hung up without answering: is it the cms API?") from None
            raise Failure(f"cannot reach the API at {self.url}: {reason}") from None
        except (ValueError, RecursionError):
            # JSONDecodeError, or an answer that is not UTF-8 or nests deeper than the decoder goes
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
    ap.add_argument("--config", help="cms.toml (default: $CMS_CONFIG, else /etc/cms/cms.toml, else the defaults)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for an answer (default 60)")
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
    im = sub.add_parser("images", help="images (no subcommand: list them)").add_subparsers(dest="sub")
    p = im.add_parser("add", help="register an image file on the controller; it is imported into every host")
    p.add_argument("name")
    p.add_argument("path", help="absolute path on the controller")
    p = im.add_parser("import", help="import an image_file's images into every host's image pool, without the API "
                      "(what ./install runs)")
    p.add_argument("image_file")
    p.add_argument("--config", dest="images_config", help="cms.toml (as the global --config)")
    pm = sub.add_parser("pm", help="physical machines").add_subparsers(dest="sub", required=True)
    pm.add_parser("list")
    pm.add_parser("query").add_argument("pmid", type=int)
    pm.add_parser("listvms", help="the VMs on a machine").add_argument("pmid", type=int)
    g = sub.add_parser("group", help="replica groups").add_subparsers(dest="sub", required=True)
    g.add_parser("status").add_argument("name", nargs="?")
    p = g.add_parser("scale")
    p.add_argument("name")
    p.add_argument("replicas", type=int)
    b = sub.add_parser("balance", help="host balancing: live migrations, consolidation, vertical scaling"
                       ).add_subparsers(dest="sub", required=True)
    b.add_parser("plan", help="what balancing would do now, and why (nothing is done)")
    p = b.add_parser("run", help="apply one plan (cms-autoscaler does it on its next tick)")
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for its migrations and resizes to end, and show them")
    # Own dests: a subcommand's defaults would overwrite the same options given before it.
    p = sub.add_parser("doctor", help="check this machine and every configured host (needs no API)")
    p.add_argument("--config", dest="doctor_config", help="cms.toml (as the global --config)")
    p.add_argument("--json", dest="doctor_json", action="store_true", help="print the checks as JSON")
    p.add_argument("--skip", default="", help="comma-separated checks to leave out (e.g. image,api)")
    p.add_argument("--timeout", dest="doctor_timeout", type=float, default=20.0,
                   help="seconds each host's libvirt gets to answer (default 20)")
    # Its own options, parsed by cms.replay.command (prefix "+": every "-" argument is passed on).
    p = sub.add_parser("replay", add_help=False, prefix_chars="+",
                       help="what policy settings would have done on recorded load (needs no API; "
                            "`cms replay --help`)")
    p.add_argument("replay_args", nargs=argparse.REMAINDER)
    p = sub.add_parser("db", help="the state database's schema revision (needs no API)")
    p.add_argument("db_sub", choices=("current", "upgrade"), help="current: where it stands; upgrade: bring it to head")
    p.add_argument("--config", dest="db_config", help="cms.toml (as the global --config)")
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
        rows = [{**v, "state": "LOST" if v.get("lost") else v["state"], "ha": "ha" if v.get("ha") else ""}
                for v in r["vms"]]
        return r, table(rows, ["vmid", "name", "instance_type", "pmid", "host", "domain", "state", "ha"])
    if a.cmd == "types":
        r = c.call("GET", "/vm/types")
        return r, table(r["types"], ["tid", "cpu", "ram", "disk"])
    if a.cmd == "images" and a.sub == "add":
        r = c.call("POST", "/v1/images", body={"name": a.name, "path": a.path})
        return r, f"image {r['id']} {r['name']}: {r['format']}, {r['size'] // 2**20} MiB, imported as {r['copy']}"
    if a.cmd == "images":
        r = c.call("GET", "/image/list")
        return r, table(r["images"], ["id", "name"])
    if a.cmd == "pm" and a.sub == "list":
        r = c.call("GET", "/v1/hosts")
        rows = [{"pmid": h["pmid"], "name": h["name"], "uri": h["uri"],
                 "state": h["state"] if h["state"] == "up" else h["state"].upper(),
                 "cpu": h["capacity"]["cpu"], "ram": h["capacity"]["ram"], "free_cpu": h["free"]["cpu"],
                 "free_ram": h["free"]["ram"], "vms": h["vms"]} for h in r["hosts"]]
        return r, table(rows, ["pmid", "name", "state", "cpu", "ram", "free_cpu", "free_ram", "vms", "uri"])
    if a.cmd == "pm" and a.sub == "query":
        r = c.call("GET", "/pm/query", {"pmid": a.pmid})
        if not r.get("pmid"):
            raise Failure(f"no machine {a.pmid}")
        rows = [{"": k, **r[k]} for k in ("capacity", "free")]
        return r, f"pmid {r['pmid']}, {r['vms']} VMs\n" + table(rows, ["", "cpu", "ram", "disk"])
    if a.cmd == "pm" and a.sub == "listvms":
        r = c.call("GET", "/pm/listvms", {"pmid": a.pmid})
        if not isinstance(r.get("vmids"), list):
            raise Failure(f"no machine {a.pmid}")
        return r, "\n".join(map(str, r["vmids"])) or "(none)"
    if a.cmd == "group" and a.sub == "status":
        r = c.call("GET", f"/v1/groups/{urllib.parse.quote(a.name, safe='')}" if a.name else "/v1/groups")
        groups = [r] if a.name else r["groups"]
        out = []
        for g in groups:
            ov = g.get("desired_override")
            serving = [x for x in g["replicas"] if not x.get("warm")]
            warm = len(g["replicas"]) - len(serving)
            pool = g.get("warm_pool") or {}
            out.append(f"group {g['name']}: {len(serving)} replicas (min {g['min']}, max {g['max']}, "
                       f"policy {g['policy']['name']}" + (f", asked {ov['replicas']}" if ov else "")
                       + (f", warm pool {warm} of {pool['size']} {pool['state']}" if pool.get("size") else "") + ")")
            rows = [{**x, "cpu": f"{x['cpu'][-1] * 100:.0f}%" if x["cpu"] else "-", "warm": "warm" if x.get("warm") else ""}
                    for x in g["replicas"]]
            out.append(table(rows, ["name", "host", "replica_state", "domain_state", "warm", "vcpus", "memory_mib",
                                    "cpu"]))
        return r, "\n".join(out)
    if a.cmd == "group" and a.sub == "scale":
        r = c.call("POST", f"/v1/groups/{urllib.parse.quote(a.name, safe='')}/scale", body={"replicas": a.replicas})
        return r, f"asked group {a.name} for {a.replicas} replicas (event {r['event_id']}); the autoscaler applies it on its " \
                  "next tick, and its policy goes on scaling from there"
    if a.cmd == "balance":
        return balance_command(a, c)
    raise Failure("unknown command")


BALANCE_OUTCOMES = ("migrated", "migrate_failed", "resized", "resize_failed")


def render_plan(p: dict[str, Any]) -> str:
    mode = ("cms-autoscaler applies plans each tick" if p["enabled"]
            else "[balancer] enabled = false: `cms balance run` applies one plan")
    out = [f"balancing ({mode}): {len(p['actions'])} action(s)"]
    rows = [{"kind": x["kind"], "strategy": x["strategy"], "vm": x["vm"] or "-", "from": x["src"],
             "to": x["dst"] if x["kind"] == "migrate" else "-",
             "size": f"{x['vcpus'] or ''} vCPU {x['memory_mib'] or ''} MiB".replace("  ", " ").strip()
             if x["kind"] == "resize" else "-"} for x in p["actions"]]
    if rows:
        out.append(table(rows, ["kind", "strategy", "vm", "from", "to", "size"]))
    out += [f"  why: {x['reason']}" for x in p["actions"]]
    out += [f"  held back: {n}" for n in p["notes"]]
    return "\n".join(out)


def balance_command(a: argparse.Namespace, c: Client) -> tuple[Any, str]:
    if a.sub == "plan":
        r = c.call("GET", "/v1/balance/plan")
        return r, render_plan(r)
    r = c.call("POST", "/v1/balance/run")
    human = render_plan(r["plan"]) + f"\nasked cms-autoscaler to apply one plan on its next tick (event {r['event_id']})"
    if a.wait <= 0:
        return r, human
    import time
    deadline = time.monotonic() + a.wait
    kinds = ",".join(("balance_run", "power_off_hint") + BALANCE_OUTCOMES)
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = c.call("GET", "/v1/events", {"since_id": r["event_id"], "kind": kinds, "limit": 1000})["events"]
        run = next((e for e in seen if e["kind"] == "balance_run"), None)
        ends = sum(1 for e in seen if e["kind"] in BALANCE_OUTCOMES)
        if run is not None and ends >= run["data"].get("migrations", 0) + run["data"].get("resizes", 0):
            break
        time.sleep(0.5)
    else:
        raise Failure(f"no outcome within {a.wait:g}s (is cms-autoscaler running?); "
                      f"`cms balance plan` and the events show where it stands")
    r["outcome"] = seen
    return r, human + "\n" + "\n".join(f"{e['kind']} {e['subject']}: {e['message']}" for e in seen)


def import_images(config: str | None, image_file: str) -> int:
    """``cms images import IMAGE_FILE``: each image of the file into every host's image pool,
    a line each (with progress for large ones); 2 when the file is bad, 1 when an import fails."""
    from cms import config as cms_config
    from cms import images, inventory
    from cms.errors import CmsError
    from cms.store import Store
    from cms.virt import Fleet
    cfg = cms_config.load_or_exit(config)
    try:
        wanted = inventory.parse_image_file(image_file)
    except inventory.InventoryError as exc:
        print(f"cms: {exc}", file=sys.stderr)
        return 2
    fleet = Fleet(cfg)
    try:
        store = images.ImageStore(cfg, Store.of(cfg), fleet)
        for i in wanted:
            imp = store.import_file(i.path, label=f"image {i.id} {i.name}", out=sys.stdout)
            how = f"copied to {', '.join(imp.uploaded)}" if imp.uploaded else "already on every host"
            print(f"image {i.id} {i.name}: {imp.format}, {imp.size // 2**20} MiB, sha256 {imp.sha256[:12]}: {how} "
                  f"({imp.copy})", flush=True)
    except CmsError as exc:
        print(f"cms: {exc}", file=sys.stderr)
        return 1
    finally:
        fleet.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    a = ap.parse_args(argv)      # usage errors: argparse prints usage and exits 2
    if a.cmd == "doctor":
        from cms import doctor
        return doctor.command(a.doctor_config or a.config, as_json=a.json or a.doctor_json, skip=a.skip,
                              timeout=a.doctor_timeout, url=a.url or "")
    if a.cmd == "images" and a.sub == "import":
        return import_images(a.images_config or a.config, a.image_file)
    if a.cmd == "replay":
        from cms.replay.command import main as replay
        return replay((["--config", a.config] if a.config else []) + (["--json"] if a.json else []) + a.replay_args)
    if a.cmd == "db":
        from cms.db import command
        return command.main(a.db_sub, a.db_config or a.config, as_json=a.json)
    url, token = _default_url_and_token(a.config)
    if not 0 < a.timeout <= 86400:
        ap.error("--timeout must be above 0 and at most 86400 seconds")
    c = Client(a.url or os.environ.get("CMS_URL") or url, a.token or os.environ.get("CMS_TOKEN") or token, a.timeout)
    try:
        r, human = run(a, c)
    except Failure as exc:
        from cms.config import one_line
        print(f"cms: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cms: interrupted", file=sys.stderr)
        return 130
    except (KeyError, TypeError, AttributeError) as exc:
        print(f"cms: unexpected answer from {c.url}: missing {exc}", file=sys.stderr)
        return 1
    print(json.dumps(r) if a.json else human)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
