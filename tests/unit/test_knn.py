"""Weighted kNN (DINO protocol) and the clip features it runs on."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from slim.evaluation.features import encode_persons, extract_features
from slim.evaluation.knn import knn_evaluate, knn_scores


def unit(*angles_deg: float) -> torch.Tensor:
    a = torch.tensor(angles_deg, dtype=torch.float64).deg2rad()
    return torch.stack([a.cos(), a.sin()], 1).float()


def test_one_nn_picks_the_most_similar_training_sample():
    train = unit(0, 90, 180, 270)
    labels = torch.tensor([0, 1, 2, 3])
    queries = unit(10, 80, 185, 300, -30)
    scores = knn_scores(train, labels, queries, num_classes=4, ks=(1,))[1]
    assert scores.argmax(1).tolist() == [0, 1, 2, 3, 0]
    assert torch.equal(scores.sum(1), torch.ones(5))  # a single neighbour takes the whole vote


def test_similarity_weighting_lets_one_close_neighbour_outvote_two_far_ones():
    # class 0 has one neighbour almost on the query, class 1 two at cos = 0.7.
    train = unit(1, math.degrees(math.acos(0.7)), -math.degrees(math.acos(0.7)))
    labels = torch.tensor([0, 1, 1])
    query = unit(0)
    weighted = knn_scores(train, labels, query, num_classes=2, ks=(3,))[3][0]
    assert weighted.argmax() == 0  # exp(1/0.07) >> 2 exp(0.7/0.07)
    sims = torch.tensor([math.cos(math.radians(1)), 0.7, 0.7])
    expected = torch.softmax(sims / 0.07, 0)
    torch.testing.assert_close(weighted, torch.stack([expected[0], expected[1:].sum()]), rtol=1e-4, atol=1e-6)
    # a flat temperature is a plain majority vote: the two far neighbours win.
    flat = knn_scores(train, labels, query, num_classes=2, ks=(3,), temperature=1e3)[3][0]
    assert flat.argmax() == 1


def test_chunked_queries_give_the_same_scores_as_one_chunk():
    g = torch.Generator().manual_seed(0)
    train, queries = torch.randn(200, 16, generator=g), torch.randn(57, 16, generator=g)
    labels = torch.randint(0, 7, (200,), generator=g)
    whole = knn_scores(train, labels, queries, 7, ks=(1, 5, 20), chunk_size=10_000)
    chunked = knn_scores(train, labels, queries, 7, ks=(1, 5, 20), chunk_size=8)
    for k in (1, 5, 20):
        torch.testing.assert_close(chunked[k], whole[k], rtol=0, atol=1e-6)
        assert torch.equal(chunked[k].argmax(1), whole[k].argmax(1))


def test_features_are_normalised_inside_and_top5_only_where_meaningful():
    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(100, 8, generator=g), torch.randn(30, 8, generator=g)
    y_train, y_test = torch.randint(0, 10, (100,), generator=g), torch.randint(0, 10, (30,), generator=g)
    result = knn_evaluate(train, y_train, test, y_test, 10, ks=(1, 20))
    scaled = knn_evaluate(train * 5.0, y_train, test * 0.1, y_test, 10, ks=(1, 20))
    assert result == scaled  # cosine similarity: scale-free
    assert set(result[1]) == {"top1"} and set(result[20]) == {"top1", "top5"}
    assert 0 <= result[20]["top1"] <= result[20]["top5"] <= 1


def test_perfectly_clustered_features_score_one():
    g = torch.Generator().manual_seed(2)
    centres = torch.eye(5) * 10
    y_train, y_test = torch.arange(5).repeat(20), torch.arange(5).repeat(4)
    train = centres[y_train] + 0.1 * torch.randn(100, 5, generator=g)
    test = centres[y_test] + 0.1 * torch.randn(20, 5, generator=g)
    assert knn_evaluate(train, y_train, test, y_test, 5, ks=(1, 20)) == {1: {"top1": 1.0}, 20: {"top1": 1.0}}


def test_k_larger_than_the_gallery_is_an_error():
    with pytest.raises(ValueError, match="exceeds"):
        knn_scores(torch.randn(3, 4), torch.zeros(3, dtype=torch.long), torch.randn(2, 4), 2, ks=(5,))


# --- clip features: persons folded into the batch, absent persons zero, L2-normalised ----------------


class MeanPool(nn.Module):
    """(B, 3, T, J) -> (B, 3) channel means plus one: non-zero even for an all-zero clip, so a zero
    feature can only come from the absent-person rule. Counts the rows it is given."""

    def __init__(self):
        super().__init__()
        self.rows_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows_seen += len(x)
        return x.mean(dim=(2, 3)) + 1.0


def person_clips() -> torch.Tensor:
    """(4, 2, 3, 8, 5): sample n, person m has channel values (n, m, 2) + 1; some persons absent."""
    clips = torch.zeros(4, 2, 3, 8, 5)
    for n in range(4):
        for m in range(2):
            clips[n, m] = torch.tensor([n + 1.0, m + 1.0, 3.0])[:, None, None]
    clips[1, 1] = 0  # second person absent
    clips[3] = 0  # nobody present
    return clips


def test_persons_are_folded_and_absent_persons_give_zero_features():
    encoder, clips = MeanPool(), person_clips()
    feats = encode_persons(encoder, clips)
    assert feats.shape == (4, 2, 3)
    assert encoder.rows_seen == 5  # absent persons never reach the encoder
    for n in range(4):
        for m in range(2):
            present = clips[n, m].any()
            expected = torch.tensor([n + 2.0, m + 2.0, 4.0]) if present else torch.zeros(3)
            torch.testing.assert_close(feats[n, m], expected)


def test_extract_features_concatenates_persons_and_normalises():
    encoder, clips = MeanPool(), person_clips()
    encoder.train()
    out = extract_features(encoder, clips, batch_size=3)
    assert out.shape == (4, 6) and out.dtype == torch.float32
    assert encoder.training  # the caller's mode is restored
    raw = encode_persons(MeanPool(), clips).flatten(1)
    torch.testing.assert_close(out[:3], raw[:3] / raw[:3].norm(dim=1, keepdim=True))
    torch.testing.assert_close(out[:3].norm(dim=1), torch.ones(3))
    assert torch.equal(out[1, 3:], torch.zeros(3))  # the absent second person stays zero
    assert torch.equal(out[3], torch.zeros(6))  # nobody present: a zero row, not NaN
    torch.testing.assert_close(extract_features(MeanPool(), clips, batch_size=1), out)
