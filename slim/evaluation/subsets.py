"""Fixed label subsets for the semi-supervised protocols (e.g. 1% and 10% of the training labels).

The subset is a pure function of (sample ids, labels, fraction, seed): ids are sorted first and each
class draws from its own generator seeded by (seed, class), so the input order, the number of
workers and the other classes' sizes do not change which samples a class contributes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def class_balanced_subset(
    sample_ids: Sequence[str], labels: Sequence[int], fraction: float, seed: int
) -> list[str]:
    """Sorted ids of a class-stratified subset: round(fraction * n_c) samples of each class c, at least one.

    Each class keeps its share of the labels (for a balanced set such as NTU this is the same count
    per class).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"class_balanced_subset: fraction must be in (0, 1], got {fraction}")
    if len(sample_ids) != len(labels):
        raise ValueError(f"class_balanced_subset: {len(sample_ids)} ids but {len(labels)} labels")
    by_class: dict[int, list[str]] = defaultdict(list)
    for sample_id, label in sorted(zip(sample_ids, labels, strict=True)):
        by_class[int(label)].append(sample_id)
    ids = [i for members in by_class.values() for i in members]
    if len(set(ids)) != len(ids):
        raise ValueError("class_balanced_subset: duplicate sample ids")
    chosen = []
    for label, members in by_class.items():
        n = max(1, math.floor(fraction * len(members) + 0.5))
        rng = np.random.default_rng([seed, label])
        chosen.extend(members[i] for i in rng.choice(len(members), size=n, replace=False))
    return sorted(chosen)
