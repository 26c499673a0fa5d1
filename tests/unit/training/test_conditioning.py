"""Class labels from the data through training to sampling: the class embedding of the nets (and
unconditional nets left exactly as they were), labelled data, label dropout at rate p_uncond,
conditional sampling interfaces, and one line for each bad input."""

import math

import numpy as np
import pytest
import torch

from support.runs import compose_train
from ddpm.data.datamodule import ImageDataModule
from ddpm.data.images import DataError, TensorImageDataset
from ddpm.data.points import PointDataModule, gaussians8
from ddpm.diffusion import schedules
from ddpm.diffusion.denoiser import Denoiser
from ddpm.diffusion.guidance import ClassifierFreeGuidance
from ddpm.diffusion.losses import SimpleLoss
from ddpm.diffusion.samplers import DDIMSampler
from ddpm.errors import ConfigError
from ddpm.evaluation.npz import save_images_npz
from ddpm.evaluation.sampling import balanced_labels, generate_images
from ddpm.nets.mlp import MLPDenoiser
from ddpm.nets.unet import UNet
from ddpm.training.conditioning import ClassConditioning, Unconditional
from ddpm.training.module import DiffusionModule

K = 10
UNET = dict(image_size=8, in_channels=1, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
            attn_resolutions=(4,), dropout=0.0)


def perturbed(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():  # the U-Net's zero-initialised output layers would hide everything
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


@pytest.mark.parametrize("make, x", [(lambda k: UNet(**UNET, num_classes=k), torch.randn(4, 1, 8, 8)),
                                     (lambda k: MLPDenoiser(hidden=32, num_classes=k), torch.randn(4, 2))],
                         ids=["unet", "mlp"])
def test_class_embedding_is_the_only_addition_and_the_unconditional_net_is_unchanged(make, x):
    torch.manual_seed(0)
    plain = perturbed(make(None))
    torch.manual_seed(0)
    cond = make(K)
    extra = set(cond.state_dict()) - set(plain.state_dict())
    assert extra == {"class_embed.weight"} and set(plain.state_dict()) <= set(cond.state_dict())
    assert cond.class_embed.weight.shape[0] == K + 1 and plain.num_classes is None and cond.num_classes == K
    cond.load_state_dict(plain.state_dict(), strict=False)
    t = torch.tensor([0, 5, 50, 500])
    with torch.no_grad():
        cond.class_embed.weight.zero_()  # a zero class vector: exactly the unconditional function
        assert torch.equal(cond(x, t, torch.tensor([0, 3, 9, K])), plain(x, t))
        cond.class_embed.weight.normal_()
        a, b = cond(x, t, torch.tensor([0, 1, 2, 3])), cond(x, t, torch.tensor([4, 1, 2, 3]))
        assert not torch.equal(a[0], b[0]) and torch.equal(a[1:], b[1:])  # each sample sees its own label
        assert torch.equal(cond(x, t), cond(x, t, torch.full((4,), K)))  # no cond: the null class
    with pytest.raises(ConfigError, match="unconditional network"):
        plain(x, t, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match="num_classes=0"):
        make(0)


def test_unconditional_init_draws_the_same_weights_with_or_without_the_option():
    torch.manual_seed(3)
    before = UNet(**UNET).state_dict()
    torch.manual_seed(3)
    after = UNet(**UNET, num_classes=K).state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


# ---- data -----------------------------------------------------------------------------------------


def test_image_datamodule_checks_num_classes_against_the_labels(tmp_path):
    images, labels = torch.zeros(8, 1, 8, 8, dtype=torch.uint8), torch.arange(8) % 4
    ok = ImageDataModule(lambda: TensorImageDataset(images, labels), 8, 1, batch_size=2, num_classes=4)
    ok.setup()
    assert ok.num_classes == 4
    bad = ImageDataModule(lambda: TensorImageDataset(images, labels), 8, 1, batch_size=2, num_classes=3)
    with pytest.raises(DataError, match=r"data.num_classes=3 but the dataset has labels 0..3"):
        bad.setup()
    from PIL import Image

    from ddpm.data.images import image_folder

    for name in ("cat", "dog", "eel"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "a.png")
    folder = ImageDataModule(lambda **kw: image_folder(image_size=8, **kw), 8, 3, batch_size=2, root=str(tmp_path))
    folder.setup()
    assert folder.num_classes == 3  # null: the number of sub-folders
    wrong = ImageDataModule(lambda **kw: image_folder(image_size=8, **kw), 8, 3, batch_size=2, root=str(tmp_path),
                            num_classes=5)
    with pytest.raises(DataError, match="data.num_classes=5 but the folder has 3 sub-folders"):
        wrong.setup()


def test_gaussians8_labels_are_the_nearest_mode_and_batches_carry_them():
    points, modes = gaussians8(2000, torch.Generator().manual_seed(0), with_labels=True)
    assert torch.equal(points, gaussians8(2000, torch.Generator().manual_seed(0)))  # the same points
    angle = torch.arange(8) * math.pi / 4
    centres = 0.8 * torch.stack([angle.cos(), angle.sin()], 1)  # (8, 2)
    assert torch.equal(torch.cdist(points, centres).argmin(1), modes)
    dm = PointDataModule(lambda n, g: gaussians8(n, g, with_labels=True), num_points=100, batch_size=50, num_classes=8)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (50, 2) and y.dtype == torch.long and torch.equal(torch.cdist(x, centres).argmin(1), y)
    with pytest.raises(ConfigError, match="data.num_classes=8 but this point set has no labels"):
        PointDataModule(gaussians8, num_points=100, batch_size=50, num_classes=8).setup()


def test_a_conditional_model_on_a_folder_needs_data_num_classes(tmp_path):
    from ddpm.runs.build import build_module

    cfg = compose_train("data=folder", f"data.root={tmp_path}", "model=unet_tiny", "data.image_size=8",
                        "conditioning=class", tmp_path=tmp_path)
    with pytest.raises(ConfigError, match="data.num_classes=K for a folder of K sub-folders") as e:
        build_module(cfg)
    assert "\n" not in str(e.value)


# ---- training ---------------------------------------------------------------------------------------


def make_module(num_classes=K, p_uncond=0.1, **kwargs):
    torch.manual_seed(0)
    net = MLPDenoiser(dim=2, hidden=16, layers=1, num_classes=num_classes)
    conditioning = Unconditional() if num_classes is None else ClassConditioning(num_classes, p_uncond)
    return DiffusionModule(net, schedules.linear(num_timesteps=20), Denoiser, SimpleLoss(), DDIMSampler(steps=4),
                           lambda p: torch.optim.Adam(p), sample_shape=(2,), compile=None, conditioning=conditioning,
                           **kwargs)


def test_unconditional_training_ignores_labels_and_draws_what_it_drew_before():
    module = make_module(num_classes=None)
    x0, labels = torch.randn(64, 2), torch.arange(64) % K
    module._noise = torch.Generator().manual_seed(2)
    got, t = module.compute_loss((x0, labels))
    want, t_want = SimpleLoss()(module.denoiser(use_ema=False), x0, torch.Generator().manual_seed(2))
    assert torch.equal(got, want) and torch.equal(t, t_want)


def test_conditional_training_passes_the_dropped_labels_to_the_net():
    module = make_module(p_uncond=0.5)
    seen = []
    module.net.register_forward_hook(lambda m, args, out: seen.append(args[2]))
    module._noise = torch.Generator().manual_seed(3)
    module.compute_loss((torch.randn(32, 2), torch.arange(32) % K))
    module._noise = torch.Generator().manual_seed(3)  # the same draw from the same seed
    expected = module.conditioning.training_condition((None, torch.arange(32) % K), module._noise)
    assert torch.equal(seen[0], expected) and (expected == K).any() and (expected < K).any()


@pytest.mark.parametrize("call, match", [
    (lambda: make_module(p_uncond=1.5), "conditioning.p_uncond=1.5 is not allowed"),
    (lambda: make_module(p_uncond=-0.1), "conditioning.p_uncond=-0.1 is not allowed"),
    (lambda: make_module().compute_loss((torch.zeros(2, 2), torch.tensor([0, K]))), f"class label {K} is not allowed"),
    (lambda: make_module().compute_loss((torch.zeros(2, 2), torch.tensor([-1, 0]))), "class label -1 is not allowed"),
    (lambda: make_module().compute_loss([torch.zeros(2, 2)]), "needs labelled batches"),
    (lambda: make_module(None).sample(2, guidance_scale=3.0), "guidance_scale=3.0 needs a class-conditional or text model"),
    (lambda: make_module(None).sample(2, cond=torch.tensor([0, 1])), "unconditional model"),
    (lambda: make_module().sample(2, cond=torch.tensor([0, K])), f"class label {K} is not allowed"),
    (lambda: make_module().sample(2, cond=torch.tensor([0, 1]), guidance_scale=-2), "scale=-2 is not allowed"),
])
def test_bad_labels_scales_and_rates_are_one_line(call, match):
    with pytest.raises(ConfigError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


# ---- sampling interfaces ----------------------------------------------------------------------------


def test_sample_guides_with_the_configured_scale_unless_given():
    from functools import partial

    module = make_module(guidance=partial(ClassifierFreeGuidance, scale=2.0))
    assert module.guidance_scale == 2.0 and module.guided(guidance_scale=5).scale == 5.0
    labels = torch.tensor([0, 3, 3, 9])
    g = partial(torch.Generator().manual_seed, 0)
    by_hand = module.sampler(module.guided(), module.schedule, torch.randn(4, 2, generator=g()), g(), labels)
    assert torch.equal(module.sample(4, g(), cond=labels), by_hand.clamp(-1, 1))
    assert not torch.equal(module.sample(4, g(), cond=labels, guidance_scale=1.0), by_hand.clamp(-1, 1))


def test_balanced_labels_and_generate_images_hand_each_batch_its_labels():
    assert balanced_labels(7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0] and balanced_labels(7, 3).dtype == torch.long

    class Recorder:
        sample_shape, calls = (1, 2, 2), []

        def sample(self, n, generator=None, use_ema=True, sampler=None, cond=None, guidance_scale=None):
            self.calls.append((cond.tolist(), guidance_scale))
            return torch.zeros(n, 1, 2, 2)

    images = generate_images(Recorder(), 5, 2, None, labels=balanced_labels(5, 3), guidance_scale=4.0)
    assert images.shape == (5, 2, 2, 1) and Recorder.calls == [([0, 1], 4.0), ([2, 0], 4.0), ([1], 4.0)]


def test_samples_npz_holds_the_labels(tmp_path):
    path = save_images_npz(tmp_path / "s.npz", np.zeros((3, 2, 2, 1), np.uint8), np.array([2, 0, 1]))
    with np.load(path) as f:
        assert sorted(f.files) == ["images", "labels"] and f["labels"].dtype == np.int64 and f["labels"].tolist() == [2, 0, 1]
    with pytest.raises(ConfigError, match="labels of shape"):
        save_images_npz(tmp_path / "t.npz", np.zeros((3, 2, 2, 1), np.uint8), np.array([2, 0]))


class StandInModule:
    def __init__(self, num_classes):
        self.conditioning = Unconditional() if num_classes is None else ClassConditioning(num_classes)
        self.guidance_scale, self.device = None if num_classes is None else 3.0, torch.device("cpu")


@pytest.mark.parametrize("options, labels, scale", [
    ({}, [0, 1, 2, 0, 1, 2, 0], 3.0),
    ({"class_labels": "balanced", "guidance_scale": 1.5}, [0, 1, 2, 0, 1, 2, 0], 1.5),
    ({"class_labels": [2, 0]}, [2, 0, 2, 0, 2, 0, 2], 3.0),
])
def test_evaluate_draws_balanced_labels_by_default(options, labels, scale):
    from omegaconf import OmegaConf

    from ddpm.runs.evaluate import sample_labels

    _, got, s, tag = sample_labels(OmegaConf.create({"num_samples": 7, "seed": 0, **options}), StandInModule(3))
    assert got.tolist() == labels and s == scale and tag.startswith(f"_s{scale:g}")
    _, random, _, _ = sample_labels(OmegaConf.create({"num_samples": 300, "seed": 0, "class_labels": "random"}), StandInModule(3))
    assert set(random.tolist()) == {0, 1, 2} and random.tolist() != balanced_labels(300, 3).tolist()


@pytest.mark.parametrize("options, classes, match", [
    ({"guidance_scale": 2.0}, None, "guidance_scale=2.0 needs a class-conditional checkpoint"),
    ({"class_labels": "balanced"}, None, "class_labels=balanced needs a class-conditional checkpoint"),
    ({"class_labels": [1, 3]}, 3, "class label 3 is not allowed"),
    ({"class_labels": "some"}, 3, "class_labels='some' is not allowed"),
])
def test_bad_evaluation_labels_are_one_line(options, classes, match):
    from omegaconf import OmegaConf

    from ddpm.runs.evaluate import sample_labels

    with pytest.raises(ConfigError, match=match) as e:
        sample_labels(OmegaConf.create({"num_samples": 4, "seed": 0, **options}), StandInModule(classes))
    assert "\n" not in str(e.value)


def test_sample_grid_draws_one_row_per_class_of_a_conditional_model(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from ddpm.training.callbacks.sample_grid import SampleGrid

    class ClassPainter:
        """Sample k is a flat 4x4 image of grey level label / (K - 1), scaled to [-1, 1]."""

        conditioning, device, sampler, calls = ClassConditioning(3), torch.device("cpu"), None, []

        def sample(self, n, generator=None, use_ema=True, sampler=None, cond=None):
            self.calls.append(cond.tolist())
            return (cond.float() / 2 * 2 - 1).view(n, 1, 1, 1).expand(n, 1, 4, 4)

    trainer = SimpleNamespace(global_step=7, default_root_dir=str(tmp_path), progress_bar_callback=None, loggers=[])
    grid = SampleGrid(num_samples=64, per_class=5)
    grid.draw(trainer, ClassPainter())
    assert ClassPainter.calls == [[0] * 5 + [1] * 5 + [2] * 5]
    image = np.asarray(Image.open(grid.last_path).convert("L"), dtype=np.float64) / 255
    side = 32 + 2  # 4x4 upscaled to 32, plus the padding
    assert image.shape == (2 + 3 * side, 2 + 5 * side)
    for row in range(3):  # row k: five images of class k
        cells = [image[2 + row * side + 16, 2 + col * side + 16] for col in range(5)]
        assert cells == pytest.approx([row / 2] * 5, abs=1 / 255)
