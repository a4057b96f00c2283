"""Visual search: embed a catalogue, index it with faiss, serve "take a photo, find similar items" over REST.

    from hubkit.search import build_catalogue_index, create_app, SearchService, Version
    build_catalogue_index("shop/", model="me/garment-embedder", to="me/garment-index")   # a data set repo
    app = create_app(SearchService([Version("a", "me/garment-index")]))                    # FastAPI

`hubkit search index DIR --model REPO --to REPO` is the first line from the command line; `spaces/search/` is the
web page. See `_index` (faiss), `_catalogue` (the repo layout), `_service` (versions, batching, fallback, metrics),
`_api` (HTTP), `_train` (a short contrastive fine-tune for the generated garment catalogue).
"""

from ._api import DEFAULT_INDEX, TOKEN_ENV, create_app, service_from_env
from ._catalogue import Catalogue, CategoryProbe, build_catalogue_index, load_catalogue, write_catalogue_index
from ._embed import FeatureEmbedder, ModelEmbedder
from ._index import VectorIndex, recall_at_k
from ._service import Metrics, MicroBatcher, SearchService, Version
from ._train import build_search_model, finetune_embedding

__all__ = [
    "DEFAULT_INDEX",
    "TOKEN_ENV",
    "Catalogue",
    "CategoryProbe",
    "FeatureEmbedder",
    "Metrics",
    "MicroBatcher",
    "ModelEmbedder",
    "SearchService",
    "VectorIndex",
    "Version",
    "build_catalogue_index",
    "build_search_model",
    "create_app",
    "finetune_embedding",
    "load_catalogue",
    "recall_at_k",
    "service_from_env",
    "write_catalogue_index",
]
