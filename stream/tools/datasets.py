"""Real data sets turned into shopstream inputs: a product catalogue and shopper behaviour.

UCI Online Retail (CC BY 4.0, Chen, Sain & Guo, 2012): every invoice line of a UK online shop,
Dec 2010 - Dec 2011. WANDS (Wayfair, MIT): real search queries.
"""
from __future__ import annotations

import csv
import gzip
import io
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Iterator

from index import Product

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
RETAIL_FILE = "online-retail/online_retail.csv.gz"
WANDS_FILE = "wands-queries/query.csv"
PACKAGE_DATA = Path(__file__).resolve().parents[1] / "data"

_PRODUCT_CODE = re.compile(r"^\d{5}[A-Za-z]{0,2}$")


def shared_data_dir() -> Path:
    return SHARED_DATA


def retail_path() -> Path:
    """The full data set beside the repo when present, else the extract shipped for the demo."""
    full = SHARED_DATA / RETAIL_FILE
    return full if full.is_file() else PACKAGE_DATA / "online_retail_sample.csv.gz"


@dataclass(frozen=True)
class RetailLine:
    invoice: str
    stock_code: str
    description: str
    quantity: int
    when: datetime
    unit_price: float
    customer: str | None
    country: str


def iter_retail(path: str | Path) -> Iterator[RetailLine]:
    with io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            try:
                qty = int(row["Quantity"])
                price = float(row["UnitPrice"])
                when = datetime.strptime(row["InvoiceDate"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
            except (ValueError, KeyError):
                continue
            cust = row.get("CustomerID") or None
            yield RetailLine(row["InvoiceNo"], row["StockCode"].strip(), (row["Description"] or "").strip(),
                             qty, when, price, cust.split(".")[0] if cust else None, row.get("Country", ""))


def is_product_line(line: RetailLine) -> bool:
    """Real merchandise: a 5-digit stock code, a described item, a sale (not a cancellation)."""
    return (bool(_PRODUCT_CODE.match(line.stock_code)) and not line.invoice.startswith("C")
            and line.quantity > 0 and line.unit_price > 0 and bool(line.description)
            and line.description.upper() == line.description)   # lower-case rows are stock notes


def retail_catalog(path: str | Path) -> list[Product]:
    """One product per stock code: its most common description and median unit price."""
    names: dict[str, Counter] = defaultdict(Counter)
    prices: dict[str, list[float]] = defaultdict(list)
    for line in iter_retail(path):
        if is_product_line(line):
            code = line.stock_code.upper()
            names[code][line.description] += 1
            prices[code].append(line.unit_price)
    return [Product(id=code, title=names[code].most_common(1)[0][0].title(),
                    price=round(median(prices[code]), 2), in_stock=True)
            for code in sorted(names)]


def wands_queries(path: str | Path | None = None) -> list[str]:
    path = Path(path) if path else SHARED_DATA / WANDS_FILE
    if not path.is_file():
        path = PACKAGE_DATA / "wands_queries.tsv"
    with open(path, encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    return [r[1] for r in rows[1:] if len(r) > 1 and r[1].strip()]
