"""Resource discovery inputs: the spec's pm_file, image_file and types_file.

pm_file
    One machine per line; blank lines and ``#`` comments are ignored. A plain address
    (``10.0.0.5``, ``hv2.example.org``) means ``qemu+ssh://root@ADDR/system``; a full libvirt
    URI (``qemu+ssh://…``, ``qemu+tcp://…``, ``qemu:///system``, ``test:///…``) is taken as is.
    Machine N in file order (counting only address lines) gets pmid N and host name ``pmN``.
    ``./install`` writes these as ``[[hosts]]`` of /etc/cms/cms.toml, so the pmid of a
    host is its position in ``Config.hosts`` (1-based) everywhere in cms. CPU, RAM and disk
    are not in the file: they are read through libvirt (``Host.capacity``) when asked.

image_file
    One image path per line (blank lines and ``#`` comments ignored). Image N in file
    order gets id ``99 + N`` (100, 101, …, as in the spec's example); its name is the file's
    basename without its extension(s) (``/srv/Ubuntu-12.04-amd64.qcow2`` → ``Ubuntu-12.04-amd64``;
    ``.img``, ``.qcow2``, ``.raw``, ``.iso`` and a trailing ``.gz``/``.xz`` are stripped).
    ``check`` also reads each image's header (cms.images.check); ./install then imports them
    into every host's image pool (``cms images import``), and VMs boot from that copy.

types_file
    The spec's JSON: ``{"types": [{"tid": 1, "cpu": 1, "ram": 512, "disk": 1}, …]}``, ram in
    MiB, disk in GiB; tids unique positive integers.

Where the API finds image_file and types_file: ``$CMS_IMAGE_FILE`` / ``$CMS_TYPES_FILE``,
else ``image_file`` / ``types_file`` beside the configuration file (``/etc/cms/`` when the
embedded defaults are used). The API imports them into its tables (cms.api_tables) at start.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from cms import files
from cms.config import Config, libvirt_uri_problem
from cms.errors import CmsError

IMAGE_ID_BASE = 100
URI_RE = re.compile(r"^[a-z][a-z0-9+]*://")
ADDR_RE = re.compile(r"^[A-Za-z0-9_.:\[\]-]+$")
IMAGE_SUFFIXES = (".gz", ".xz", ".bz2", ".qcow2", ".qcow", ".img", ".raw", ".iso", ".vmdk", ".vdi")


class InventoryError(CmsError):
    """A pm_file, image_file or types_file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class Machine:
    pmid: int
    name: str
    uri: str
    address: str


@dataclass(frozen=True)
class Image:
    id: int
    name: str
    path: str


@dataclass(frozen=True)
class VmType:
    tid: int
    cpu: int
    ram: int
    disk: int

    def as_json(self) -> dict[str, int]:
        return {"tid": self.tid, "cpu": self.cpu, "ram": self.ram, "disk": self.disk}


def _read(path: str | os.PathLike[str], what: str) -> str:
    p = Path(path)
    try:
        return files.read_regular(p)[0].decode("utf-8")
    except files.Unreadable as exc:
        raise InventoryError(f"{what} {p}: " + exc.words({
            files.MISSING: "no such file", files.DIRECTORY: "is a directory", files.DENIED: "permission denied",
            files.SPECIAL: "not a regular file"}, "cannot read")) from None
    except UnicodeDecodeError:
        raise InventoryError(f"{what} {p}: not a text file") from None


def _lines(text: str) -> list[tuple[int, str]]:
    out = []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line:
            out.append((no, line))
    return out


def address_to_uri(addr: str) -> str:
    if URI_RE.match(addr):
        why = libvirt_uri_problem(addr)
        if why:
            raise ValueError(f"{addr!r} is not a libvirt URI cms can use: {why}")
        return addr
    if not ADDR_RE.match(addr):
        raise ValueError(f"{addr!r} is neither an address nor a libvirt URI")
    return f"qemu+ssh://root@{addr}/system"


def parse_pm_file(path: str | os.PathLike[str]) -> list[Machine]:
    text = _read(path, "pm_file")
    out: list[Machine] = []
    seen: dict[str, int] = {}
    for no, line in _lines(text):
        if " " in line or "\t" in line:
            raise InventoryError(f"pm_file {path}:{no}: one address or URI per line, got {line!r}")
        try:
            uri = address_to_uri(line)
        except ValueError as exc:
            raise InventoryError(f"pm_file {path}:{no}: {exc}") from None
        if uri in seen:
            raise InventoryError(f"pm_file {path}:{no}: {line!r} repeats line {seen[uri]}")
        seen[uri] = no
        n = len(out) + 1
        out.append(Machine(n, f"pm{n}", uri, line))
    if not out:
        raise InventoryError(f"pm_file {path}: lists no machine")
    return out


def image_name(path: str) -> str:
    name = os.path.basename(path.rstrip("/"))
    changed = True
    while changed:
        changed = False
        for suf in IMAGE_SUFFIXES:
            if name.lower().endswith(suf) and len(name) > len(suf):
                name, changed = name[: -len(suf)], True
    return name


def parse_image_file(path: str | os.PathLike[str]) -> list[Image]:
    text = _read(path, "image_file")
    out: list[Image] = []
    for no, line in _lines(text):
        if not line.startswith("/"):
            raise InventoryError(f"image_file {path}:{no}: {line!r} is not a full path")
        if any(i.path == line for i in out):
            raise InventoryError(f"image_file {path}:{no}: {line!r} is listed twice")
        out.append(Image(IMAGE_ID_BASE + len(out), image_name(line), line))
    if not out:
        raise InventoryError(f"image_file {path}: lists no image")
    return out


def check_images(image_file: str | os.PathLike[str], images: list[Image]) -> None:
    """Every image readable and a disk image (cms.images.check), before anything is imported."""
    from cms.images import ImageError, check
    for i in images:
        try:
            check(i.path)
        except ImageError as exc:
            raise InventoryError(f"image_file {image_file}: image {i.id}: {exc}") from None


def parse_types(data: object, where: str) -> list[VmType]:
    if not isinstance(data, dict) or not isinstance(data.get("types"), list):
        raise InventoryError(f'{where}: expected {{"types": [{{"tid", "cpu", "ram", "disk"}}, ...]}}')
    out: list[VmType] = []
    for i, t in enumerate(data["types"]):
        if not isinstance(t, dict):
            raise InventoryError(f"{where}: types[{i}] is not an object")
        vals = {}
        for k in ("tid", "cpu", "ram", "disk"):
            v = t.get(k)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "disk" else 1):
                raise InventoryError(f"{where}: types[{i}].{k} must be a positive integer, not {v!r}")
            vals[k] = v
        if any(o.tid == vals["tid"] for o in out):
            raise InventoryError(f"{where}: tid {vals['tid']} appears twice")
        out.append(VmType(**vals))
    if not out:
        raise InventoryError(f"{where}: lists no type")
    return out


def parse_types_file(path: str | os.PathLike[str]) -> list[VmType]:
    text = _read(path, "types_file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InventoryError(f"types_file {path}: not valid JSON: {exc}") from None
    return parse_types(data, f"types_file {path}")


def default_paths(cfg: Config) -> tuple[Path, Path]:
    """(image_file, types_file) the API reads."""
    base = Path(cfg.source).parent if os.path.isfile(cfg.source) else Path("/etc/cms")
    return (Path(os.environ.get("CMS_IMAGE_FILE") or base / "image_file"),
            Path(os.environ.get("CMS_TYPES_FILE") or base / "types_file"))


def hosts_toml(machines: list[Machine]) -> str:
    """The [[hosts]] tables of cms.toml for these machines."""
    parts = []
    for m in machines:
        parts.append(f'[[hosts]]\nname = "{m.name}"   # pmid {m.pmid}: {m.address}\nuri = {json.dumps(m.uri)}\n')
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """`python -m cms.inventory check PM IMAGE TYPES` / `hosts-toml PM` (used by ./install)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if len(argv) == 4 and argv[0] == "check":
            pms, imgs, types = parse_pm_file(argv[1]), parse_image_file(argv[2]), parse_types_file(argv[3])
            check_images(argv[2], imgs)
            print(f"{len(pms)} machines, {len(imgs)} images, {len(types)} types")
            return 0
        if len(argv) == 2 and argv[0] == "hosts-toml":
            print(hosts_toml(parse_pm_file(argv[1])), end="")
            return 0
    except InventoryError as exc:
        print(f"cms: {exc}", file=sys.stderr)
        return 1
    print("usage: python -m cms.inventory check PM_FILE IMAGE_FILE TYPES_FILE | hosts-toml PM_FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
