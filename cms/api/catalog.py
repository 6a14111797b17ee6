"""What VMs are made from: the instance types and the images (GET /vm/types, /image/list,
/v1/types, /v1/images, POST /v1/images).

The types_file and image_file are read when the API starts (``load_inventory``) into the
API's tables (cms.api_tables), with the configured hosts; a file that cannot be read keeps
what the tables hold. An image's bytes live in cms's image storage on every host
(cms.images): registering one imports it there first.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from cms import images, inventory
from cms.api.failures import Duplicate, Invalid, Unknown
from cms.api_tables import ApiTables, Taken
from cms.config import Config
from cms.store import Store

log = logging.getLogger("cms.api")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")    # a VM's or an image's name


def check_name(what: str, name: Any) -> str:
    """The name, or Invalid saying what a name may be."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise Invalid(f"bad {what} name {name!r}: 1-64 letters, digits, '_', '.', '-', starting with a letter or digit")
    return name


class Catalog:
    def __init__(self, cfg: Config, store: Store, tables: ApiTables, image_store: images.ImageStore) -> None:
        self.cfg, self.store, self.tables, self.image_store = cfg, store, tables, image_store

    def load_inventory(self, types: list[inventory.VmType] | None, imgs: list[inventory.Image] | None,
                       files: tuple[Path, Path] | None) -> None:
        """The types and images given, else those of the types_file and image_file (where
        they exist and read well), and the configured hosts, into the tables."""
        img_file, types_file = files or inventory.default_paths(self.cfg)
        if types is None and types_file.exists():
            try:
                types = inventory.parse_types_file(types_file)
            except inventory.InventoryError as exc:
                log.error("%s; keeping the types already in the state database", exc)
        if imgs is None and img_file.exists():
            try:
                imgs = inventory.parse_image_file(img_file)
            except inventory.InventoryError as exc:
                log.error("%s; keeping the images already in the state database", exc)
        moved = self.tables.replace_inventory(
            None if types is None else [(t.tid, t.cpu, t.ram, t.disk) for t in types],
            None if imgs is None else [(i.id, i.name, i.path) for i in imgs],
            [(h.name, h.uri) for h in self.cfg.hosts])
        for r, iid in moved:
            log.warning("image %s (%s) registered as id %d is now id %d: image_file took its id",
                        r["name"], r["path"], r["id"], iid)

    def types(self) -> list[dict[str, Any]]:
        return self.tables.types()

    def type(self, tid: int) -> dict[str, Any]:
        t = self.tables.type(tid)
        if t is None:
            raise Unknown(f"no instance type {tid}")
        return t

    def images(self, with_path: bool = False) -> list[dict[str, Any]]:
        """The spec's list ({id, name}); with_path (/v1) adds the source and its imported copy."""
        rows = self.tables.images(with_path)
        return [self._image_json(r) for r in rows] if with_path else rows

    def image(self, image_id: int | None) -> dict[str, Any]:
        """The image with that id (None: the first one); Unknown when there is none."""
        r = self.tables.image(image_id)
        if r is None:
            raise Unknown("no image is configured (image_file lists none)" if image_id is None else f"no image {image_id}")
        return r

    def _image_json(self, img: dict[str, Any]) -> dict[str, Any]:
        imp = self.image_store.copy_of(img["path"])
        return {**img, "imported": imp is not None, "sha256": imp and imp["sha256"], "format": imp and imp["format"],
                "size": imp and imp["size"], "copy": imp and imp["copy"]}

    def register_image(self, name: Any, path: Any) -> dict[str, Any]:
        """POST /v1/images: check the file, import it into every host's image pool, list it."""
        check_name("image", name)
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise Invalid(f"path must be the absolute path of an image file on the controller, not {path!r}")
        r = self.tables.image_named_or_at(name, path)
        if r is not None:
            what = f"named {name!r}" if r["name"] == name else f"at {path}"
            raise Duplicate(f"image {r['id']} {what} is registered already")
        try:
            imp = self.image_store.import_file(path, label=f"image {name}")
        except images.ImageError as exc:
            raise Invalid(str(exc)) from None
        try:
            iid = self.tables.add_image(name, path)
        except Taken:
            raise Duplicate(f"an image named {name!r} or at {path} was registered meanwhile") from None
        self.store.add_event("image_register", f"image {iid} {name} ({path}) imported as {imp.copy}"
                             + (f", copied to {', '.join(imp.uploaded)}" if imp.uploaded else ", already on every host"),
                             subject=name, data={"id": iid, "sha256": imp.sha256, "copy": imp.copy,
                                                 "uploaded": list(imp.uploaded)})
        return self._image_json({"id": iid, "name": name, "path": path})
