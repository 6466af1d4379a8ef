"""Plain Python reference of the Rust packager (`rust/parquet/`), for tests only: reads the
store tree with `safetensors` and `json`, writes the same table with pyarrow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import load_file


def schema(num_layers: int, hidden_size: int) -> pa.Schema:
    features = {
        "info": {
            "features": {
                "persona_id": {"dtype": "string", "_type": "Value"},
                "name": {"dtype": "string", "_type": "Value"},
                "sample_ids": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"},
                "vector": {
                    "shape": [num_layers, hidden_size],
                    "dtype": "float32",
                    "_type": "Array2D",
                },
            }
        }
    }
    return pa.schema(
        [
            ("persona_id", pa.string()),
            ("name", pa.string()),
            ("sample_ids", pa.list_(pa.string())),
            ("vector", pa.list_(pa.list_(pa.float32()))),
        ],
        metadata={"huggingface": json.dumps(features)},
    )


def _name(entry: dict, persona_id: str) -> str:
    """The recorded name as is; the id only when no name is recorded."""
    name = entry.get("name")
    return persona_id if name is None else name


def split_table(variant_dir: Path) -> pa.Table:
    """One split as a table: personas in byte order of their ids."""
    manifest = json.loads((variant_dir / "manifest.json").read_text(encoding="utf-8"))
    ids = sorted(manifest["personas"], key=lambda s: s.encode())
    vectors = [
        load_file(str(variant_dir / f"{pid}.safetensors"))["activations"].astype(np.float32)
        for pid in ids
    ]
    return pa.table(
        {
            "persona_id": ids,
            "name": [_name(manifest["personas"][p], p) for p in ids],
            "sample_ids": [list(manifest["personas"][p].get("sample_ids") or []) for p in ids],
            "vector": [v.tolist() for v in vectors],
        },
        schema=schema(manifest["num_layers"], manifest["hidden_size"]),
    )


def write_split(variant_dir: Path, path: Path, row_group_rows: int) -> None:
    pq.write_table(split_table(variant_dir), path, compression="zstd", row_group_size=row_group_rows)
