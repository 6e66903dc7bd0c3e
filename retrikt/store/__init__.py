"""Knowledge store: teacher-generated, teacher-labelled examples + embeddings + a FAISS index."""
from retrikt.store.index import build_index, exact_search, load_index, save_index, to_gpu
from retrikt.store.store import SCHEMA_VERSION, Store, StoreWriter

__all__ = ["SCHEMA_VERSION", "Store", "StoreWriter", "build_index", "exact_search", "load_index", "save_index",
           "to_gpu"]
