"""The hand-written OpenAPI 3 description served at /v1/openapi.json (kept beside the code it describes)."""

from __future__ import annotations

from typing import Any


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], desc: str = "OK") -> dict[str, Any]:
    return {"description": desc, "content": {"application/json": {"schema": schema}}}


ERR = {"$ref": "#/components/responses/Error"}
INT = {"type": "integer"}
NUM = {"type": "number"}
STR = {"type": "string"}


def _obj(props: dict[str, Any], required: list[str] | None = None, extra: bool = True) -> dict[str, Any]:
    o: dict[str, Any] = {"type": "object", "properties": props, "required": required or list(props)}
    if not extra:
        o["additionalProperties"] = False
    return o


TRIPLE = _obj({"cpu": INT, "ram": INT, "disk": INT})
VM = _obj({"vmid": INT, "name": STR, "instance_type": INT, "pmid": INT, "host": STR, "domain": STR,
           "image_id": INT, "state": STR, "created": NUM,
           # ha: restarted on a live host from its own disk when its host is declared down and fenced;
           # lost: its host is down and it was not restarted elsewhere (it comes back with its host)
           "ha": {"type": "boolean"}, "lost": {"type": "boolean"}})
HOST_STATES = ["up", "suspect", "down", "fencing"]
HOST = _obj({"pmid": INT, "name": STR, "uri": STR, "up": {"type": "boolean"},
             # as cms-autoscaler declared it (cms.autoscaler.hoststate), else whether it answered now
             "state": {"type": "string", "enum": HOST_STATES}, "capacity": TRIPLE, "free": TRIPLE,
             "used": _obj({"vcpus": INT, "ram": INT}), "vms": INT,
             # what the console shows: every cms domain there by kind (vms above counts API VMs only),
             # vCPUs against the host's CPUs and the overcommit, RAM, the pool, and its last CPU sample
             "domains": _obj({"vm": INT, "replica": INT, "warm": INT, "total": INT}),
             "vcpus": _obj({"used": INT, "cpus": INT, "overcommit": NUM, "limit": INT, "ratio": {"type": "number", "nullable": True}}),
             "memory_mib": _obj({"total": INT, "free": INT, "given": INT, "reserve": INT}),
             "disk_bytes": _obj({"total": INT, "free": INT}),
             "cpu": _obj({"utilization": {"type": "number", "nullable": True}, "ts": {"type": "number", "nullable": True},
                          "source": {"type": "string", "nullable": True, "enum": ["host", "domains", None]},
                          # the node's own busy share (virNodeGetCPUStats), where libvirt has it
                          "node": {"type": "number", "nullable": True}})})
REPLICA = _obj({"name": STR, "host": STR, "pmid": INT, "replica_state": STR, "domain_state": STR,
                "warm": {"type": "boolean"}, "vcpus": INT, "memory_mib": INT,
                "created": NUM, "cpu": {"type": "array", "items": NUM}})
WARM_POOL = _obj({"size": INT, "state": STR, "reuse_on_scale_in": {"type": "boolean"}})
GROUP = _obj({"name": STR, "min": INT, "max": INT, "vcpus": INT, "memory_mib": INT,
              "policy": {"type": "object"}, "replicas": {"type": "array", "items": _ref("Replica")},
              "warm_pool": WARM_POOL,
              "desired_override": {"oneOf": [{"type": "null"}, _obj({"replicas": INT, "ts": NUM})]}})
EVENT = _obj({"id": INT, "ts": NUM, "kind": STR, "group": STR, "subject": STR, "message": STR,
              "data": {"type": "object"}})
TYPE = _obj({"tid": INT, "cpu": INT, "ram": INT, "disk": INT})
BALANCE_ACTION = _obj({"kind": {"type": "string", "enum": ["migrate", "resize", "power_off"]},
                       "strategy": {"type": "string", "enum": ["relief", "anti_affinity", "vertical", "consolidation"]},
                       "vm": STR, "src": STR, "dst": STR, "reason": STR, "vcpus": INT, "memory_mib": INT, "after": STR,
                       "data": {"type": "object"}})
BALANCE_PLAN = _obj({"ts": NUM, "enabled": {"type": "boolean"}, "limits": {"type": "object"},
                     "actions": {"type": "array", "items": BALANCE_ACTION}, "notes": {"type": "array", "items": STR}})
IMAGE = _obj({"id": INT, "name": STR})
NULLABLE_STR = {"type": "string", "nullable": True}
IMAGE_V1 = _obj({"id": INT, "name": STR, "path": STR, "imported": {"type": "boolean"}, "sha256": NULLABLE_STR,
                 "format": NULLABLE_STR, "size": {"type": "integer", "nullable": True}, "copy": NULLABLE_STR})

# A VM as GET /v1/vms/{vmid} shows it: the stored row plus what libvirt says now (absent when its host does not answer).
VM_DETAIL = {"allOf": [VM, {"type": "object", "required": ["domain_state", "type", "image"], "properties": {
    "domain_state": STR, "vcpus": INT, "memory_mib": INT, "max_vcpus": INT, "max_memory_mib": INT, "address": STR,
    "kernel_mib": INT,
    "type": {"oneOf": [TYPE, {"type": "null"}]},
    "image": {"oneOf": [_obj({"id": INT, "name": STR, "path": STR}), {"type": "null"}]}}}]}
CONSOLE = _obj({"vmid": INT, "host": STR, "path": STR, "text": STR, "size": INT, "reason": STR},
               ["vmid", "host", "path", "text", "size"])
# The history routes: one shared time axis (bucket starts) and one value or null per bucket per series.
SERIES = {"type": "array", "items": {"type": "number", "nullable": True}}
FRAME = {"since": NUM, "until": NUM, "step": NUM, "ts": {"type": "array", "items": NUM}, "points": INT}
VM_METRICS = _obj({"vmid": INT, "domain": STR, **FRAME, "series": _obj(
    {"cpu": SERIES, "cpu_max": SERIES, "memory_mib": SERIES, "vcpus": SERIES, "vcpu": {"type": "array", "items": SERIES}})})
HOST_METRICS = _obj({"pmid": INT, "host": STR, "cpus": INT, "source": {"type": "string", "enum": ["host", "domains"]}, **FRAME,
                     "series": _obj({"cpu": SERIES, "cpu_max": SERIES, "node_cpu": SERIES, "free_memory_mib": SERIES,
                                     "vms": SERIES, "vcpus": SERIES}),
                     "domains": {"type": "object", "additionalProperties": SERIES}})
GROUP_METRICS = _obj({"group": STR, "policy": STR, "thresholds": {"type": "object", "additionalProperties": NUM},
                      "load": {"type": "object", "additionalProperties": NUM},
                      "min": INT, "max": INT, **FRAME,
                      "series": _obj({"cpu": SERIES, "replicas": SERIES, "in_flight": SERIES, "p95_s": SERIES,
                                      "states": {"type": "object", "additionalProperties": SERIES}}),
                      "markers": {"type": "array", "items": _obj({"ts": NUM, "kind": STR, "subject": STR, "message": STR})}})
RANGE = [{"name": "since", "in": "query", "required": False, "description": "epoch seconds; default until - 3600",
          "schema": {"type": "number", "minimum": 0, "maximum": 1e10}},
         {"name": "until", "in": "query", "required": False, "description": "epoch seconds; default now",
          "schema": {"type": "number", "minimum": 0, "maximum": 1e10}},
         {"name": "step", "in": "query", "required": False,
          "description": "seconds per point; default (until - since) / 300; at most 2000 points",
          "schema": {"type": "number", "minimum": 0, "maximum": 1e10}}]


def _metrics(summary: str, params: list[Any], schema: dict[str, Any]) -> dict[str, Any]:
    return {"parameters": params, "get": {"summary": summary, "parameters": RANGE,
                                          "responses": {"200": _json(schema), "400": ERR, "404": ERR}}}


AUTH = [{"bearer": []}]
MAX_ID = 2 ** 63 - 1
VMID = {"name": "vmid", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID}}
PMID = {"name": "pmid", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID}}
GNAME = {"name": "name", "in": "path", "required": True, "schema": STR}
MUT_ERRS = {"400": ERR, "401": ERR, "403": ERR, "404": ERR, "409": ERR, "413": ERR, "415": ERR, "502": ERR, "503": ERR}


def _spec_get(summary: str, params: list[tuple[str, bool]], schema: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"summary": summary, "tags": ["spec"],
                    "parameters": [{"name": n, "in": "query", "required": r, "schema": STR} for n, r in params],
                    "responses": {"200": _json(schema, "the result, or the spec's failure value (0)")}}}


SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "cms API", "version": "1.0.0",
             "description": "The mini-project's URLs (failures answer 200 with 0) and the resource-style /v1 API. "
                            "Every answer is JSON: an error on a spec URL is its failure value, on any other URL "
                            "outside /v1 the number 0, on /v1 {title, description}. "
                            "Mutating /v1 calls need 'Authorization: Bearer <api.token>'."},
    "paths": {
        "/vm/create": _spec_get("Create a VM", [("name", True), ("instance_type", True), ("image_id", False)],
                                _obj({"vmid": INT})),
        "/vm/query": _spec_get("Query a VM", [("vmid", True)],
                               {"oneOf": [_obj({"vmid": INT, "name": STR, "instance_type": INT, "pmid": INT}, extra=False),
                                          # while its host is down (and it was not restarted elsewhere)
                                          _obj({"vmid": INT, "name": STR, "instance_type": INT, "pmid": INT,
                                                "lost": {"type": "boolean", "enum": [True]}}, extra=False),
                                          _obj({"vmid": {"type": "integer", "enum": [0]}}, extra=False)]}),
        "/vm/destroy": _spec_get("Destroy a VM", [("vmid", True)], _obj({"status": {"type": "integer", "enum": [0, 1]}})),
        "/vm/types": _spec_get("Instance types", [], _obj({"types": {"type": "array", "items": TYPE}})),
        "/image/list": _spec_get("Images", [], _obj({"images": {"type": "array", "items": IMAGE}})),
        "/pm/list": _spec_get("Machines", [], _obj({"pmids": {"type": "array", "items": INT}}, extra=False)),
        "/pm/query": _spec_get("A machine", [("pmid", True)],
                               {"oneOf": [_obj({"pmid": INT, "capacity": TRIPLE, "free": TRIPLE, "vms": INT}, extra=False),
                                          _obj({"pmid": {"type": "integer", "enum": [0]}}, extra=False)]}),
        "/pm/listvms": _spec_get("VMs on a machine", [("pmid", True)],
                                 _obj({"vmids": {"oneOf": [{"type": "array", "items": INT},
                                                           {"type": "integer", "enum": [0]}]}}, extra=False)),
        "/v1/vms": {
            "get": {"summary": "All VMs made through the API", "responses": {"200": _json(_obj({"vms": {"type": "array", "items": _ref("Vm")}}))}},
            "post": {"summary": "Create a VM", "security": AUTH,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _obj(
                         {"name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
                          "instance_type": {"type": "integer", "minimum": 1},
                          "image_id": {"type": "integer", "minimum": 0},
                          "pmid": {"type": "integer", "minimum": 1, "description": "this machine, not placement's choice"},
                          "ha": {"type": "boolean", "description": "restart it on a live host from its own disk when "
                                 "its host is declared down and fenced (default false)"}},
                         ["name", "instance_type"])}}},
                     "responses": {"201": _json(_ref("Vm"), "created"), **MUT_ERRS}},
        },
        "/v1/vms/{vmid}": {
            "parameters": [VMID],
            "get": {"summary": "A VM, with its live state, size, resize maximum, address, type and image",
                    "responses": {"200": _json(_ref("VmDetail")), "404": ERR}},
            "delete": {"summary": "Destroy a VM", "security": AUTH,
                       "responses": {"200": _json(_obj({"vmid": INT, "status": INT})), **MUT_ERRS}},
        },
        "/v1/vms/{vmid}/migrate": {
            "parameters": [VMID],
            "post": {"summary": "Live-migrate a VM (destination by placement unless pmid is given)", "security": AUTH,
                     "requestBody": {"required": False, "content": {"application/json": {"schema": _obj(
                         {"pmid": {"type": "integer", "minimum": 1}}, [])}}},
                     "responses": {"200": _json(_ref("Vm")), **MUT_ERRS}},
        },
        "/v1/vms/{vmid}/resize": {
            "parameters": [VMID],
            "post": {"summary": "Vertical scaling: vCPUs and/or memory, live", "security": AUTH,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _obj(
                         {"vcpus": {"type": "integer", "minimum": 1}, "memory_mib": {"type": "integer", "minimum": 64}}, [])}}},
                     "responses": {"200": _json(_ref("Vm")), **MUT_ERRS}},
        },
        "/v1/vms/{vmid}/metrics": _metrics("A VM's CPU, per-vCPU and memory history, downsampled", [VMID], VM_METRICS),
        "/v1/vms/{vmid}/console": {
            "parameters": [VMID],
            "get": {"summary": "The end of the VM's serial console log (read-only; only for VMs on this machine)",
                    "parameters": [{"name": "bytes", "in": "query", "required": False,
                                    "schema": {"type": "integer", "minimum": 1, "maximum": 1 << 20}}],
                    "responses": {"200": _json(CONSOLE), "400": ERR, "404": ERR}},
        },
        "/v1/hosts/{pmid}/metrics": _metrics("A host's CPU, free RAM and VM count history, and each VM's share of it",
                                             [PMID], HOST_METRICS),
        "/v1/groups/{name}/metrics": _metrics("A group's mean CPU, thresholds, replicas by state and decisions",
                                              [GNAME], GROUP_METRICS),
        "/v1/hosts": {"get": {"summary": "Machines with capacity and free room",
                              "responses": {"200": _json(_obj({"hosts": {"type": "array", "items": _ref("Host")}}))}}},
        "/v1/hosts/{pmid}": {"parameters": [PMID],
                             "get": {"summary": "A machine", "responses": {"200": _json(_ref("Host")), "404": ERR}}},
        "/v1/images": {
            "get": {"summary": "Images, each with its copy in the hosts' image pool (null fields: not imported)",
                    "responses": {"200": _json(_obj({"images": {"type": "array", "items": _ref("Image")}}))}},
            "post": {"summary": "Register an image file on the controller: checked (readable, a disk image), "
                                "imported into every host's image pool (nothing copied when the same content is "
                                "there already), then listed by /image/list", "security": AUTH,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _obj(
                         {"name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
                          "path": {"type": "string", "pattern": "^/"}})}}},
                     "responses": {"201": _json(_ref("Image"), "registered and imported"), **MUT_ERRS}},
        },
        "/v1/types": {"get": {"summary": "Instance types", "responses": {"200": _json(_obj({"types": {"type": "array", "items": TYPE}}))}}},
        "/v1/groups": {"get": {"summary": "Replica groups with replicas, policy and recent CPU",
                               "responses": {"200": _json(_obj({"groups": {"type": "array", "items": _ref("Group")}}))}}},
        "/v1/groups/{name}": {"parameters": [GNAME],
                              "get": {"summary": "A replica group", "responses": {"200": _json(_ref("Group")), "404": ERR}}},
        "/v1/groups/{name}/scale": {
            "parameters": [GNAME],
            "post": {"summary": "Ask for a replica count; the autoscaler applies it on its next tick, then its policy goes on", "security": AUTH,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _obj(
                         {"replicas": {"type": "integer", "minimum": 0}})}}},
                     "responses": {"202": _json(_obj({"group": STR, "replicas": INT, "event_id": INT, "pending": {"type": "boolean"}}), "recorded"), **MUT_ERRS}},
        },
        "/v1/events": {"get": {"summary": "Events after since_id, oldest first (order=desc: the newest first)",
                               "parameters": [
                                   {"name": "since_id", "in": "query", "required": False,
                                    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID}},
                                   {"name": "limit", "in": "query", "required": False,
                                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                                   {"name": "group", "in": "query", "required": False, "schema": STR},
                                   {"name": "kind", "in": "query", "required": False, "schema": STR,
                                    "description": "only these kinds (comma-separated)"},
                                   {"name": "before_id", "in": "query", "required": False,
                                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                                    "description": "only events older than this id (paging with order=desc)"},
                                   {"name": "order", "in": "query", "required": False,
                                    "schema": {"type": "string", "enum": ["asc", "desc"]}}],
                               "responses": {"200": _json(_obj({"events": {"type": "array", "items": _ref("Event")}})), "400": ERR}}},
        "/v1/balance/plan": {"get": {"summary": "What host balancing would do now (migrations, resizes, hosts that "
                                                "could be powered off), each with its reason; nothing is done",
                                     "responses": {"200": _json(_ref("BalancePlan")), "503": ERR}}},
        "/v1/balance/run": {"post": {"summary": "Apply one balancing plan: cms-autoscaler applies a fresh one on its "
                                                "next tick; the answer shows the plan as it stands now",
                                     "security": AUTH,
                                     "responses": {"202": _json(_obj({"pending": {"type": "boolean"}, "requested_at": NUM,
                                                                      "event_id": INT, "plan": _ref("BalancePlan")}),
                                                                "recorded"), **MUT_ERRS}}},
        "/v1/controller": {"get": {"summary": "Which controller leads, as this machine's cms-autoscaler knows it "
                                              "(role null and an error when it does not answer)",
                                   "responses": {"200": _json(_obj({
                                       "role": {"type": "string", "enum": ["leader", "follower"], "nullable": True},
                                       "name": {**STR, "nullable": True}, "term": {**INT, "nullable": True},
                                       "leader": {**STR, "nullable": True},
                                       "coordination": {"type": "boolean", "nullable": True},
                                       "error": STR}, required=["role", "name", "term", "leader", "coordination"]))}}},
        "/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"})}}},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "responses": {"Error": _json(_obj({"title": STR, "description": STR}), "error")},
        "schemas": {"Image": IMAGE_V1, "Vm": VM, "VmDetail": VM_DETAIL, "Host": HOST, "Replica": REPLICA, "Group": GROUP, "Event": EVENT,
                    "BalancePlan": BALANCE_PLAN},
    },
}


def _document_server_refusals(spec: dict[str, Any]) -> None:
    """gunicorn refuses a request line over 4094 bytes (414) and oversized headers (431) before
    any route runs, on every operation (cms.api.workers makes the answer JSON, shaped as that
    URL's errors are: /v1's message, a spec URL's failure value)."""
    for path, item in spec["paths"].items():
        for op in (item[m] for m in ("get", "post", "put", "patch", "delete") if m in item):
            if path.startswith("/v1"):
                body = ERR
            else:
                body = {**op["responses"]["200"], "description": "refused before the call: its failure value"}
            op["responses"].setdefault("414", body)
            op["responses"].setdefault("431", body)


_document_server_refusals(SPEC)
