"""verify/probe.same_outputs: what counts as 'computes the same' for a rewrite."""

import numpy as np

from edgeopt.verify.probe import TOLERANCE, same_outputs


def test_rounding_passes_and_a_wrong_value_does_not():
    a = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    assert same_outputs([a], [a + 0.5 * TOLERANCE * 3])
    assert not same_outputs([a], [a + 2 * TOLERANCE * 3])


def test_inf_or_nan_where_the_reference_is_finite_differs():
    a = np.ones((2, 3), np.float32)
    for bad in (np.inf, np.nan):
        b = a.copy()
        b[1, 2] = bad
        assert not same_outputs([a], [b])
    assert same_outputs([np.array([np.inf, 1.0])], [np.array([np.inf, 1.0])])


def test_shapes_and_output_counts_must_match():
    a = np.zeros((2, 3), np.float32)
    assert not same_outputs([a], [a.reshape(3, 2)])
    assert not same_outputs([a, a], [a])


def test_rel_l2_lets_a_few_flipped_pixels_pass_but_not_a_wrong_output():
    a = np.random.default_rng(0).random((1, 1, 64, 64))
    flipped = a.copy()
    flipped[0, 0, :2, :2] = 1 - flipped[0, 0, :2, :2]  # 4 of 4096 pixels of a step-like map
    assert not same_outputs([a], [flipped])  # per element: a rewrite that must keep the numbers
    assert same_outputs([a], [flipped], 0.05, by="rel_l2")
    assert not same_outputs([a], [a[..., ::-1]], 0.05, by="rel_l2")
