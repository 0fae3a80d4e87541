"""Write the precomputed ModelSpec of every catalog model into peftplan/models/specs/ (gzipped JSON).

Run after editing the catalog or upgrading transformers:  .venv/bin/python scripts/build_model_specs.py
Each file records the config digest it was built from; `get_spec` ignores a file whose digest no
longer matches the catalog, and tests/planner/test_analytic_specs.py checks that rebuilding gives
the shipped bytes.
"""

from __future__ import annotations

import copy
import gzip
import json
import sys
import time
from importlib import metadata

from peftplan.models import _SPEC_FORMAT, SHIPPED_SPECS, config_digest, shipped_spec_path, spec_from_config
from peftplan.models.catalog import catalog_config_dict, catalog_ids


def spec_file_bytes(model_id: str) -> bytes:
    """The gzipped file for one catalog model, built from scratch (deterministic bytes)."""
    config = catalog_config_dict(model_id)
    digest = config_digest(config)  # before building: transformers may normalise nested dicts in place
    spec = spec_from_config(copy.deepcopy(config), model_id=model_id, cache=False)
    payload = {
        "format": _SPEC_FORMAT,
        "model_id": model_id,
        "config_digest": digest,
        "transformers": metadata.version("transformers"),
        "spec": spec.to_json(),
    }
    return gzip.compress(json.dumps(payload, sort_keys=True).encode(), mtime=0)


def main(ids: list[str]) -> int:
    SHIPPED_SPECS.mkdir(exist_ok=True)
    for model_id in ids or catalog_ids():
        started = time.perf_counter()
        data = spec_file_bytes(model_id)
        shipped_spec_path(model_id).write_bytes(data)
        print(f"{model_id:45s} {len(data):>8,} bytes  {time.perf_counter() - started:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
