"""The PS second-moment loss: zero for the expert's own shape, growing with the axis's tilt, differentiable."""

import math

import numpy as np
import pytest
import torch

from psfh.core.labels import PS
from psfh.training.loss import ps_moment_loss, segmentation_loss, shape_tensor


def _ellipse(angle_deg: float, size: int = 64, semi=(14.0, 7.0)) -> torch.Tensor:
    """H x W labels: a PS ellipse (axis ratio 2) at ``angle_deg``, background elsewhere."""
    rows, cols = np.mgrid[0:size, 0:size].astype(float) - size / 2
    angle = math.radians(angle_deg)
    along = cols * math.cos(angle) + rows * math.sin(angle)
    across = -cols * math.sin(angle) + rows * math.cos(angle)
    return torch.from_numpy(np.where((along / semi[0]) ** 2 + (across / semi[1]) ** 2 <= 1, PS, 0))


def _confident_logits(labels: torch.Tensor) -> torch.Tensor:
    """1 x 3 x H x W logits whose softmax is ~one-hot on ``labels``."""
    return 20.0 * torch.nn.functional.one_hot(labels.long(), 3).permute(2, 0, 1)[None].float()


def test_shape_tensor_gives_the_axis_and_has_trace_one():
    _, shape = shape_tensor((_ellipse(30.0) == PS).float()[None])
    eigenvalues, eigenvectors = torch.linalg.eigh(shape[0])
    axis = eigenvectors[:, -1]
    assert float(shape[0].trace()) == pytest.approx(1.0, abs=1e-5)
    assert math.degrees(math.atan2(float(axis[1]), float(axis[0]))) % 180 == pytest.approx(30.0, abs=1.0)
    assert float(eigenvalues[-1] / eigenvalues[0]) == pytest.approx(4.0, rel=0.15)  # (14 / 7) ** 2


def test_loss_is_zero_for_the_expert_shape_and_grows_with_tilt():
    expert = _ellipse(20.0)[None]
    losses = [float(ps_moment_loss(_confident_logits(_ellipse(20.0 + tilt)), expert)) for tilt in (0, 5, 10, 20)]
    assert losses[0] == pytest.approx(0.0, abs=1e-3)
    assert losses[0] < losses[1] < losses[2] < losses[3]
    assert losses[2] == pytest.approx(0.15, abs=0.05)  # the docstring's figure


def test_images_without_an_expert_ps_do_not_count():
    no_ps = torch.zeros(1, 64, 64, dtype=torch.long)
    assert float(ps_moment_loss(_confident_logits(_ellipse(10.0)), no_ps)) == 0.0


def _axis_deg(logits: torch.Tensor) -> float:
    _, shape = shape_tensor(torch.softmax(logits, dim=1)[:, PS])
    axis = torch.linalg.eigh(shape[0])[1][:, -1]
    return math.degrees(math.atan2(float(axis[1]), float(axis[0]))) % 180


def test_gradient_turns_the_predicted_axis_towards_the_expert():
    expert = _ellipse(20.0)[None]
    logits = (3.0 * _confident_logits(_ellipse(35.0)) / 20.0).requires_grad_(True)
    first = segmentation_loss(ps_moment_weight=1.0)(logits, expert[:, None])
    first.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    optimizer = torch.optim.Adam([logits], lr=0.05)
    for _ in range(30):  # the moment term alone turns the soft PS towards the expert's axis
        optimizer.zero_grad()
        ps_moment_loss(logits, expert).backward()
        optimizer.step()
    assert abs(_axis_deg(logits.detach()) - 20.0) < 10.0  # started 15 deg off


def test_weight_zero_is_the_paper_loss():
    labels = _ellipse(20.0)[None, None]
    logits = torch.randn(1, 3, 64, 64)
    assert float(segmentation_loss()(logits, labels)) == pytest.approx(
        float(segmentation_loss(ps_moment_weight=0.0)(logits, labels)))
    assert float(segmentation_loss(ps_moment_weight=1.0)(logits, labels)) > float(segmentation_loss()(logits, labels))
