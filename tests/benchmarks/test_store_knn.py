import numpy as np

from benchmarks.store_knn import knn_predict

LABELS = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]], dtype=np.float32)


def test_sharp_temperature_follows_the_nearest_neighbour():
    sims = np.array([[0.9, 0.8, 0.1]], dtype=np.float32)
    # tau 0.1: weights ~ e^9 : e^8 : e^1, so 0.73 * 0.9 + 0.27 * 0.2 = 0.71 for label 0
    assert knn_predict(sims, np.array([[0, 1, 2]]), LABELS, tau=0.1).tolist() == [0]


def test_equal_similarities_average_the_neighbours_labels():
    sims = np.full((1, 3), 0.5, dtype=np.float32)
    # mean of the three: label 0 = 1.5 / 3 = label 1; only neighbours 1 and 2 -> label 1 (0.7)
    assert knn_predict(sims[:, :2], np.array([[1, 2]]), LABELS, tau=1.0).tolist() == [1]
    assert knn_predict(sims[:, :1], np.array([[0]]), LABELS, tau=1.0).tolist() == [0]
