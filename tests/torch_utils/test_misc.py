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


def test_to_device_pins_only_host_to_gpu_copies(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("pin_memory called for a copy that stays off the GPU")

    monkeypatch.setattr(torch.Tensor, "pin_memory", refuse)
    x = torch.arange(6.0).reshape(2, 3)
    y = misc.to_device(x, "cpu")
    assert torch.equal(y, x) and y.device.type == "cpu"
    assert misc.to_device(x, torch.device("meta")).device.type == "meta"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_device_queues_the_copy_without_waiting_for_the_gpu():
    """A step's inputs reach the GPU while it still runs the previous step: no host sync."""
    x = torch.randn(64, 512)
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # about a second of GPU time queued ahead of the copy
    y = misc.to_device(x, "cuda")
    gpu_still_busy = not torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    assert gpu_still_busy and y.device.type == "cuda" and torch.equal(y.cpu(), x)
    labels = misc.to_device(torch.zeros(64, 0), "cuda")   # an unconditional network's labels
    assert labels.shape == (64, 0) and labels.device.type == "cuda"
    leaf = x.clone().requires_grad_(True)
    (misc.to_device(leaf, "cuda") * 3).sum().backward()   # drags optimise host-side heatmap centres
    assert torch.equal(leaf.grad, torch.full_like(x, 3.0))
