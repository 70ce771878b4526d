"""Weighted kNN against a brute-force NumPy loop."""

import numpy as np

from amcl_jax.evaluate import knn


def _reference(bank, bank_labels, queries, k, temperature, num_classes):
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    predictions = []
    for q in queries:
        q = q / np.linalg.norm(q)
        sims = np.array([float(np.dot(q, b)) for b in bank])
        order = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for idx in order:
            votes[bank_labels[idx]] += np.exp(sims[idx] / temperature)
        predictions.append(int(np.argmax(votes)))
    return np.array(predictions)


def test_knn_matches_brute_force():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(60, 5)).astype(np.float32)
    labels = rng.integers(0, 4, size=60)
    queries = rng.normal(size=(23, 5)).astype(np.float32)
    for k, temperature in [(1, 0.1), (7, 0.1), (20, 0.5), (200, 0.1)]:
        expected = _reference(bank, labels, queries, min(k, 60), temperature, 4)
        got = knn.knn_predict(bank, labels, queries, k=k, temperature=temperature,
                              num_classes=4, query_chunk=10)
        np.testing.assert_array_equal(got, expected)


def test_knn_accuracy_on_separable_clusters():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 8)) * 5
    labels = rng.integers(0, 3, size=90)
    bank = centres[labels] + rng.normal(size=(90, 8)) * 0.1
    query_labels = rng.integers(0, 3, size=30)
    queries = centres[query_labels] + rng.normal(size=(30, 8)) * 0.1
    assert knn.knn_accuracy(bank, labels, queries, query_labels, k=10) == 1.0
    assert knn.knn_accuracy(bank, labels, queries, (query_labels + 1) % 3, k=10) == 0.0
