"""Product vectors in, candidate products out (FAISS). Knows nothing of Kafka or Faust."""
from index.build import build_index, embed_products
from index.catalog import Product, default_catalog_path, iter_catalog, load_catalog
from index.errors import CatalogError, IndexError_, SnapshotError, UnknownProductError
from index.item_index import Candidate, Filters, ItemIndex
from index.kinds import KINDS, IndexParams, choose_kind
from index.snapshot import load_snapshot, read_manifest, save_snapshot

__all__ = [
    "Product", "load_catalog", "iter_catalog", "default_catalog_path",
    "ItemIndex", "Candidate", "Filters", "build_index", "embed_products",
    "KINDS", "IndexParams", "choose_kind",
    "save_snapshot", "load_snapshot", "read_manifest",
    "IndexError_", "CatalogError", "SnapshotError", "UnknownProductError",
]
