"""Products and catalogue files (JSONL or CSV: id, title, optional category, brand, price, in_stock)."""
from __future__ import annotations

import csv
import gzip
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import orjson

from index.errors import CatalogError

MAX_TITLE_CHARS = 512


@dataclass(frozen=True)
class Product:
    id: str
    title: str
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    in_stock: bool = True

    @property
    def text(self) -> str:
        """What the text encoder sees for this product."""
        parts = [self.title]
        if self.brand:
            parts.append(f"brand: {self.brand}")
        if self.category:
            parts.append(f"category: {self.category}")
        return " | ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, where: str = "") -> "Product":
        if not isinstance(raw, Mapping):
            raise CatalogError(f"{where}product must be an object")
        pid = raw.get("id")
        if isinstance(pid, (int,)) and not isinstance(pid, bool):
            pid = str(pid)
        if not isinstance(pid, str) or not pid.strip():
            raise CatalogError(f"{where}product needs a non-empty string 'id'")
        title = raw.get("title")
        if not isinstance(title, str) or not title.strip():
            raise CatalogError(f"{where}product {pid!r} needs a non-empty 'title'")
        price = raw.get("price")
        if price in ("", None):
            price = None
        else:
            try:
                price = float(price)
            except (TypeError, ValueError):
                raise CatalogError(f"{where}product {pid!r}: price {price!r} is not a number") from None
            if price < 0:
                raise CatalogError(f"{where}product {pid!r}: negative price")
        in_stock = raw.get("in_stock", True)
        if isinstance(in_stock, str):
            low = in_stock.strip().lower()
            if low in ("", "1", "true", "yes", "y"):
                in_stock = True
            elif low in ("0", "false", "no", "n"):
                in_stock = False
            else:
                raise CatalogError(f"{where}product {pid!r}: in_stock {in_stock!r} is not a boolean")
        elif not isinstance(in_stock, bool):
            raise CatalogError(f"{where}product {pid!r}: in_stock must be a boolean")

        def opt(name: str) -> str | None:
            v = raw.get(name)
            return str(v).strip() or None if v not in (None, "") else None

        return cls(id=pid.strip(), title=title.strip()[:MAX_TITLE_CHARS], category=opt("category"),
                   brand=opt("brand"), price=price, in_stock=in_stock)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def iter_catalog(path: str | Path) -> Iterator[Product]:
    """Read a catalogue file: ``.jsonl`` or ``.csv`` (optionally ``.gz``)."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"catalogue file not found: {path}")
    name = path.name.removesuffix(".gz")
    with _open_text(path) as fh:
        if name.endswith(".jsonl") or name.endswith(".json"):
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    raw = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise CatalogError(f"{path}:{n}: not JSON ({exc})") from None
                yield Product.from_mapping(raw, where=f"{path}:{n}: ")
        elif name.endswith(".csv"):
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "id" not in reader.fieldnames or "title" not in reader.fieldnames:
                raise CatalogError(f"{path}: a CSV catalogue needs a header with 'id' and 'title'")
            for n, row in enumerate(reader, 2):
                yield Product.from_mapping(row, where=f"{path}:{n}: ")
        else:
            raise CatalogError(f"{path}: unknown catalogue format (use .jsonl or .csv, optionally .gz)")


def load_catalog(path: str | Path) -> list[Product]:
    """All products of a file; a repeated id keeps the last record."""
    seen: dict[str, Product] = {}
    for p in iter_catalog(path):
        seen[p.id] = p
    if not seen:
        raise CatalogError(f"{path}: no products")
    return list(seen.values())


def default_catalog_path() -> Path:
    """The UCI Online Retail product catalogue shipped with shopstream (CC BY 4.0)."""
    return Path(__file__).parent / "data" / "online_retail_products.jsonl.gz"
