"""The loss logged per range of noise level off VP (``training.loss_log.LossByNoiseLevel``): ten ranges equal in
sigma / (1 + sigma), named by their sigma edges, each the mean of the losses whose noise level sigma / alpha lies in
it, computed here by hand from the edges."""

import pytest
import torch

from ddpm.diffusion.processes import EDMProcess, FlowProcess
from ddpm.training.loss_log import LossByNoiseLevel

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("process", [EDMProcess(), FlowProcess()], ids=["edm", "flow"])
def test_each_range_is_the_mean_of_the_losses_whose_noise_level_lies_in_it(process):
    generator = torch.Generator().manual_seed(0)
    t = (torch.rand(400, generator=generator, dtype=torch.float64) * 0.999 if isinstance(process, FlowProcess)
         else torch.exp(torch.randn(400, generator=generator, dtype=torch.float64) * 2))
    loss = torch.rand(400, generator=generator, dtype=torch.float64).float()
    log = LossByNoiseLevel(10, process.noise_level)
    log.add(loss[:250], t[:250].float())
    log.add(loss[250:], t[250:].float())
    means = log.means()

    nu = process.noise_level(t.float().double())
    edges = [k / 10 / (1 - k / 10) for k in range(10)] + [float("inf")]  # sigma of tau = k / 10
    names = ["0", "0.111", "0.25", "0.429", "0.667", "1", "1.5", "2.33", "4", "9", "inf"]
    for k in range(10):
        inside = (nu >= edges[k]) & (nu < edges[k + 1])
        key = f"train/loss_sigma{names[k]}-{names[k + 1]}"
        expected = loss[inside].double().mean() if inside.any() else torch.tensor(0.0)
        torch.testing.assert_close(means[key].double(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(means["train/loss"].double(), loss.double().mean(), rtol=1e-6, atol=1e-6)
    assert len(means) == 11 and float(log.counts.sum()) == 0  # the window is reset
