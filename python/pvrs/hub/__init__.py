"""Publishing persona vectors as a Hugging Face dataset, and reading them back.

Layout (DESIGN.md "Hub dataset layout", compatible with persona-vectors 0.6.x): one config
per `<model_dir>__<mask_strategy>`, one split per prompt variant, one row per persona with
columns `persona_id`, `name`, `sample_ids` and `vector` (`Array2D(float32, (L, H))`), in
`<config>/<split>-NNNNN-of-NNNNN.parquet`, plus a `README.md` card whose YAML lets
`datasets.load_dataset(repo, config, split=variant)` load it with no custom code.

`package` (`packaging.py`) writes that folder with the Rust core; `push` (`push.py`) packages
and uploads it in one commit; `HFPersonaVectorStore` (`reading.py`, over `source.py`) reads
it back from a local folder or a Hub repo with the local store's query methods; `cards.py`
reads and merges dataset cards."""

from __future__ import annotations

from pvrs.hub.cards import VectorConfig, merge_cards, parse_vector_config_name
from pvrs.hub.packaging import PackageResult, SplitFiles, package
from pvrs.hub.push import PushResult, push
from pvrs.hub.reading import HFPersonaVectorStore
from pvrs.hub.source import list_hub_vector_models

__all__ = [
    "HFPersonaVectorStore",
    "PackageResult",
    "PushResult",
    "SplitFiles",
    "VectorConfig",
    "list_hub_vector_models",
    "merge_cards",
    "package",
    "parse_vector_config_name",
    "push",
]
