import numpy as np
import pytest

from retrikt.io import RetriktError
from retrikt.store.prior import kshot_prior, prior_weights, reweight


def test_reweighted_labels_take_the_target_prior_and_keep_their_order_within_a_class():
    rng = np.random.default_rng(0)
    soft = rng.dirichlet([4.0, 1.0, 1.0], size=300)  # a labeller leaning to class 0
    target = np.array([0.3, 0.5, 0.2])
    w = prior_weights(soft, target)
    q = reweight(soft, w)
    np.testing.assert_allclose(q.mean(0), target, atol=1e-5)
    assert w.max() == 1.0 and w[0] < w[1]  # the over-predicted class is the one scaled down
    np.testing.assert_allclose(q.sum(1), 1.0)
    # one factor per class: every entry's odds between two classes scale by the same constant
    np.testing.assert_allclose((q[:, 1] / q[:, 0]) / (soft[:, 1] / soft[:, 0]), w[1] / w[0], rtol=1e-9)
    assert (q.argmax(1) == 0).mean() < (soft.argmax(1) == 0).mean()


def test_labels_already_at_the_prior_are_left_alone_and_one_hot_rows_stay_one_hot():
    soft = np.array([[0.8, 0.2], [0.2, 0.8], [1.0, 0.0], [0.0, 1.0]])
    w = prior_weights(soft, np.array([0.5, 0.5]))
    np.testing.assert_allclose(w, [1.0, 1.0])
    np.testing.assert_allclose(reweight(soft[2:], np.array([0.2, 1.0])), soft[2:])


def test_kshot_prior_is_add_one_smoothed_so_an_absent_class_keeps_some_mass():
    np.testing.assert_allclose(kshot_prior([0, 0, 1, 1, 1], 3), [3 / 8, 4 / 8, 1 / 8])
    with pytest.raises(RetriktError, match="classification task"):
        kshot_prior([0.5, 1.2], 1)


def test_a_class_without_probability_mass_cannot_be_reweighted():
    with pytest.raises(RetriktError, match="no probability mass"):
        prior_weights(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([0.5, 0.5]))
    with pytest.raises(RetriktError, match="do not match"):
        prior_weights(np.ones((3, 2)) / 2, np.ones(3) / 3)
