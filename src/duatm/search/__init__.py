"""Search: a saved gallery index, a pooled-vector shortlist and exact DuATM ranking.

index = build_index(model, gallery_records)          # or load_index("gallery.index")
result = search(model, index, model.extract(query_paths), top=10, shortlist=1000)
"""

from duatm.search.index import (
    GalleryIndex,
    GalleryIndexError,
    build_index,
    check_same_model,
    index_sequences,
    load_index,
    pooled_vectors,
    save_index,
)
from duatm.search.ranking import SearchResult, exact_search, rerank, search
from duatm.search.shortlist import Shortlister, faiss_installed

__all__ = [
    "GalleryIndex",
    "GalleryIndexError",
    "SearchResult",
    "Shortlister",
    "build_index",
    "check_same_model",
    "exact_search",
    "faiss_installed",
    "index_sequences",
    "load_index",
    "pooled_vectors",
    "rerank",
    "save_index",
    "search",
]
