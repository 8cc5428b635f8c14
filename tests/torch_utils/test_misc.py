"""misc: argument checks name the argument, parameter copying, gradient sanitising."""

from __future__ import annotations

import pytest
import torch

from torch_utils import misc


def test_checks_name_argument_and_value():
    with pytest.raises(ValueError, match=r"img_resolution must be a power of two >= 4, got 48"):
        misc.check_power_of_two("img_resolution", 48)
    with pytest.raises(ValueError, match=r"act='bogus'"):
        misc.check_choice("act", "bogus", ["relu"])
    with pytest.raises(ValueError, match="z has size 3 in dimension 1"):
        misc.assert_shape(torch.zeros(2, 3), [None, 4], "z")
    misc.assert_shape(torch.zeros(2, 4), [None, 4], "z")  # no error


def test_nan_to_num_sanitises_in_place():
    g = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])
    misc.nan_to_num_([g, None])
    assert g.tolist() == [0.0, 1e5, -1e5, 1.0]


def test_copy_params_and_buffers():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    misc.copy_params_and_buffers(a, b)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    with pytest.raises(KeyError):
        misc.copy_params_and_buffers(torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 2))
