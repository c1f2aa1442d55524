"""The one synthetic test table the tests share: test-like rows (non-contiguous ``index`` in shuffled order, an
``image_link`` named by the index, product groups, entities in turn), as the challenge's test.csv has them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from utils.core.units import ENTITIES


def synthetic_test(n: int = 120, seed: int = 0, entities: Sequence[str] = ENTITIES) -> pd.DataFrame:
    """``n`` rows: indices drawn from ``range(10 * n)`` (never contiguous, never sorted), links
    ``https://example.com/<index>.jpg``, group ids, and the ``entities`` in turn."""
    rng = np.random.default_rng(seed)
    index = rng.choice(10 * n, size=n, replace=False)
    return pd.DataFrame(
        {
            "index": index.astype("int64"),
            "image_link": [f"https://example.com/{i}.jpg" for i in index],
            "group_id": rng.integers(100000, 999999, size=n),
            "entity_name": [entities[i % len(entities)] for i in range(n)],
        }
    )
