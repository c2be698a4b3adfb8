"""Seeded, class-stratified label subsets for the semi-supervised protocols."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from slim.evaluation.subsets import class_balanced_subset


def dataset(counts: dict[int, int]) -> tuple[list[str], list[int]]:
    ids, labels = [], []
    for label, n in counts.items():
        ids += [f"c{label:02d}_s{i:04d}" for i in range(n)]
        labels += [label] * n
    return ids, labels


COUNTS = {0: 200, 1: 150, 2: 99, 3: 40, 4: 7}


@pytest.mark.parametrize("fraction", [0.01, 0.1])
def test_subset_is_stratified_with_at_least_one_per_class(fraction):
    ids, labels = dataset(COUNTS)
    chosen = class_balanced_subset(ids, labels, fraction, seed=0)
    label_of = dict(zip(ids, labels, strict=True))
    per_class = Counter(label_of[i] for i in chosen)
    assert per_class == {c: max(1, int(fraction * n + 0.5)) for c, n in COUNTS.items()}
    assert chosen == sorted(set(chosen)) and set(chosen) <= set(ids)


def test_subset_is_stable_under_input_permutation():
    ids, labels = dataset(COUNTS)
    reference = class_balanced_subset(ids, labels, 0.1, seed=3)
    pairs = list(zip(ids, labels, strict=True))
    for shuffle_seed in range(3):
        random.Random(shuffle_seed).shuffle(pairs)
        shuffled_ids, shuffled_labels = zip(*pairs, strict=True)
        assert class_balanced_subset(list(shuffled_ids), list(shuffled_labels), 0.1, seed=3) == reference


def test_seed_changes_the_draw_and_other_classes_do_not():
    ids, labels = dataset(COUNTS)
    a = class_balanced_subset(ids, labels, 0.1, seed=0)
    assert class_balanced_subset(ids, labels, 0.1, seed=0) == a
    assert class_balanced_subset(ids, labels, 0.1, seed=1) != a
    # growing class 4 leaves the choice within class 0 untouched
    grown_ids, grown_labels = dataset({**COUNTS, 4: 70})
    b = class_balanced_subset(grown_ids, grown_labels, 0.1, seed=0)
    assert [i for i in b if i.startswith("c00")] == [i for i in a if i.startswith("c00")]


def test_full_fraction_and_bad_inputs():
    ids, labels = dataset({0: 5, 1: 3})
    assert class_balanced_subset(ids, labels, 1.0, seed=0) == sorted(ids)
    with pytest.raises(ValueError, match="fraction"):
        class_balanced_subset(ids, labels, 0.0, seed=0)
    with pytest.raises(ValueError, match="duplicate"):
        class_balanced_subset(ids + ids[:1], labels + [1], 0.5, seed=0)
    with pytest.raises(ValueError, match="labels"):
        class_balanced_subset(ids, labels[:-1], 0.5, seed=0)
