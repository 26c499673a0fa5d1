"""FID, KID and IS: the math against closed forms and torch-fidelity, the real Inception network on
MNIST (tens of images: it runs at a few images per second on this CPU), IO, reference caching,
and the training callback with a stand-in feature extractor."""

import math
import threading

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers.logger import Logger

from ddpm.data.datamodule import ImageDataModule
from ddpm.data.images import TensorImageDataset, digits, mnist
from ddpm.data.pixels import from_uint8, to_uint8
from ddpm.errors import ConfigError
from ddpm.evaluation.distances import frechet_distance, inception_score, kernel_inception_distance, score_images
from ddpm.evaluation.feature_stats import FeatureStats
from ddpm.evaluation.inception import INCEPTION_FILE, InceptionFeatures, extract_features, inception_weights_path
from ddpm.evaluation.npz import check_images, load_npz, save_images_npz
from ddpm.evaluation.reference import Shard, dataset_key, reference_statistics
from ddpm.evaluation.sampling import chunk_seed
from ddpm.training.callbacks.fid import FIDCallback, fid_name, lightning_shard
from support.runs import CONF
from support.shared_data import INCEPTION_WEIGHTS, MNIST, require
from support.standins import StandIn


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # On the shared 2-core machine a second thread only adds contention (measured: Inception, the
    # tiny U-Net and a 2048-d eigh run 1.5-25x faster on one thread there).
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


# ---- Frechet distance, KID, IS against closed forms and torch-fidelity --------------------------
def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    # diagonal S1, S2: tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n", [500, 20])  # full rank, and fewer samples than dimensions (singular)
def test_frechet_distance_matches_torch_fidelity_and_scipy_sqrtm(n):
    import scipy.linalg
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng = np.random.RandomState(0)
    f1 = rng.randn(n, 64) @ rng.randn(64, 64) * 0.3
    f2 = rng.randn(n, 64) @ rng.randn(64, 64) * 0.3 + 0.2
    s1, s2 = FeatureStats.from_features(f1), FeatureStats.from_features(f2)
    ours = frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma)
    theirs = fid_statistics_to_metric({"mu": s1.mu, "sigma": s1.sigma}, {"mu": s2.mu, "sigma": s2.sigma}, False)
    covmean = scipy.linalg.sqrtm(s1.sigma @ s2.sigma).real
    by_sqrtm = ((s1.mu - s2.mu) ** 2).sum() + np.trace(s1.sigma + s2.sigma - 2 * covmean)
    assert ours == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6)
    assert ours == pytest.approx(by_sqrtm, rel=1e-5)
    assert frechet_distance(s1.mu, s1.sigma, s1.mu, s1.sigma) == pytest.approx(0.0, abs=1e-6 * np.trace(s1.sigma))


def test_kid_is_the_unbiased_mmd_with_the_cubic_kernel_by_hand():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = np.array([[2.0, 0.0], [0.5, 0.5], [0.0, -1.0]])
    k = lambda a, b: (a @ b / 2 + 1) ** 3  # noqa: E731
    m = 3
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    mean, std = kernel_inception_distance(x, y, subsets=4, subset_size=3)  # every subset is the whole set
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_kid_matches_torch_fidelity_on_the_same_subsets():
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.RandomState(1)
    f1, f2 = rng.rand(60, 32), rng.rand(50, 32) + 0.05
    ours = kernel_inception_distance(f1, f2, subsets=7, subset_size=20, seed=3)
    theirs = kid_features_to_metric(torch.from_numpy(f1), torch.from_numpy(f2), kid_subsets=7, kid_subset_size=20, rng_seed=3, verbose=False)
    assert ours == pytest.approx((theirs["kernel_inception_distance_mean"], theirs["kernel_inception_distance_std"]), rel=1e-9)


def test_inception_score_by_hand_and_against_torch_fidelity():
    from torch_fidelity.metric_isc import isc_features_to_metric

    # K confident classes used equally often: p(y|x) one-hot, p(y) uniform, so IS = K
    confident = 50.0 * torch.eye(4).repeat(5, 1)
    assert inception_score(confident.numpy(), splits=1)[0] == pytest.approx(4.0, rel=1e-6)
    # two samples, two classes: IS = exp(mean_i KL(p_i || p_bar))
    p = np.array([[0.9, 0.1], [0.2, 0.8]])
    p_bar = p.mean(0)
    expected = math.exp(np.mean([(p[i] * np.log(p[i] / p_bar)).sum() for i in range(2)]))
    assert inception_score(np.log(p), splits=1)[0] == pytest.approx(expected, rel=1e-12)
    logits = np.random.RandomState(0).randn(40, 10) * 3
    theirs = isc_features_to_metric(torch.from_numpy(logits), splits=4, shuffle=False)
    assert inception_score(logits, splits=4) == pytest.approx((theirs["inception_score_mean"], theirs["inception_score_std"]), rel=1e-9)


def test_score_images_reports_is_from_a_classifier_and_explains_its_absence():
    images = np.random.RandomState(0).randint(0, 256, (6, 8, 8, 1)).astype(np.uint8)
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8]] * 3, dtype=torch.float64))
    reference = FeatureStats.from_features(extract_features(images, StandIn())["pool3"])
    got = score_images(images, reference, StandIn(logits), metrics=["is"])
    assert got["is"] == pytest.approx(inception_score(logits.numpy())[0], rel=1e-12)
    missing = score_images(images, reference, StandIn(), metrics=["is", "kid"], kid_subset_size=4)
    assert missing["is"] is None and "no class logits" in missing["is_reason"]
    assert missing["kid_subset_size"] == 4 and math.isfinite(missing["kid_mean"])
    no_features = FeatureStats(reference.mu, reference.sigma, 6)  # mu/sigma only, as from pytorch-fid
    assert score_images(images, no_features, StandIn(), metrics=["kid"])["kid_mean"] is None
    with pytest.raises(ConfigError, match="'psnr'"):
        score_images(images, reference, StandIn(), metrics=["fid", "psnr"])


# ---- images and files -------------------------------------------------------------------------
def test_npz_round_trip_keys_layouts_and_statistics(tmp_path):
    images = np.random.RandomState(0).randint(0, 256, (5, 8, 8, 3)).astype(np.uint8)
    assert np.array_equal(load_npz(save_images_npz(tmp_path / "a.npz", images)), images)
    np.savez(tmp_path / "b.npz", images[..., 0])  # arr_0, grayscale without a channel axis
    assert load_npz(tmp_path / "b.npz").shape == (5, 8, 8, 1)
    stats = FeatureStats.from_features(np.random.RandomState(1).randn(10, 4))
    np.savez(tmp_path / "c.npz", mu=stats.mu, sigma=stats.sigma)  # what pytorch-fid and TTUR write
    loaded = load_npz(tmp_path / "c.npz")
    assert isinstance(loaded, FeatureStats) and np.allclose(loaded.sigma, stats.sigma) and loaded.features is None
    with pytest.raises(ConfigError, match="float32"):
        check_images(images.astype(np.float32))
    with pytest.raises(ConfigError, match=r"\(5, 3, 8, 8\)"):
        check_images(images.transpose(0, 3, 1, 2))  # NCHW is refused, not silently misread
    with pytest.raises(ConfigError, match="does not exist"):
        load_npz(tmp_path / "missing.npz")


def test_to_uint8_inverts_the_datasets_scaling():
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = levels.float() * (2.0 / 255) - 1  # k * 2 / 255 - 1
    assert torch.equal(TensorImageDataset(levels, torch.zeros(1))[0][0], x[0])  # as the datasets serve them
    assert torch.equal(from_uint8(levels), x) and torch.equal(from_uint8(levels.numpy()), x)  # any layout, kept
    assert np.array_equal(to_uint8(x)[..., 0], levels[:, 0].numpy())
    assert np.array_equal(to_uint8(from_uint8(levels.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)), levels.permute(0, 2, 3, 1).numpy())
    assert to_uint8(torch.tensor([-3.0, -1.0, 1.0, 3.0]).view(1, 1, 2, 2)).ravel().tolist() == [0, 0, 255, 255]  # clamped


def test_missing_inception_weights_say_what_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv("DDPM_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match="DDPM_INCEPTION_WEIGHTS") as err:
        inception_weights_path(None)
    assert INCEPTION_FILE in str(err.value) and "inception_weights=" in str(err.value)
    with pytest.raises(ConfigError, match="nope.pth"):
        inception_weights_path(tmp_path / "nope.pth")
    weights = tmp_path / "pool3.pth"  # only found, never read
    weights.write_bytes(b"")
    monkeypatch.setenv("DDPM_INCEPTION_WEIGHTS", str(weights))
    assert inception_weights_path(None) == weights
    cached = tmp_path / "hub" / "checkpoints" / INCEPTION_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    monkeypatch.delenv("DDPM_INCEPTION_WEIGHTS")
    assert inception_weights_path(None) == cached  # torch-fidelity's usual cache


# ---- reference statistics: cache, key, sharding -----------------------------------------------
def digits_module():
    return ImageDataModule(digits, image_size=8, channels=1, batch_size=16, name="digits")


def test_reference_statistics_are_cached_under_a_key_and_reused(tmp_path):
    extractor = StandIn()
    stats = reference_statistics(digits_module(), extractor, count=100, cache_dir=tmp_path, kid_features=30)
    assert [p.name for p in tmp_path.iterdir()] == ["digits-train-n100-1x8px.npz"]
    assert extractor.calls == 100 and stats.count == 100 and stats.features.shape == (30, 16)
    again = reference_statistics(digits_module(), extractor, count=100, cache_dir=tmp_path, kid_features=30)
    assert extractor.calls == 100  # read from the cache
    assert np.allclose(again.sigma, stats.sigma) and np.array_equal(again.features, stats.features)
    # the moments summed across processes give np.cov's answer; KID keeps the first k of the same subset
    order = np.random.RandomState(0).permutation(1797)[:100]
    images = to_uint8(torch.stack([digits()[int(i)][0] for i in order]))
    direct = FeatureStats.from_features(extract_features(images, StandIn())["pool3"])
    assert np.allclose(stats.sigma, direct.sigma, atol=1e-9) and np.allclose(stats.mu, direct.mu)
    assert np.allclose(stats.features, extract_features(images[:30], StandIn())["pool3"])
    with pytest.raises(ConfigError, match="reference_count=5000"):
        reference_statistics(digits_module(), extractor, count=5000)


def test_dataset_key_names_folders_by_their_root(tmp_path):
    from functools import partial

    from ddpm.data.images import image_folder

    folder = ImageDataModule(partial(image_folder, image_size=16), image_size=16, channels=3, root=str(tmp_path / "faces"))
    key = dataset_key(folder, 500)
    assert key.startswith("image_folder-faces-") and key.endswith("-train-n500-3x16px")
    assert dataset_key(ImageDataModule(partial(image_folder, image_size=16), 16, 3, root=str(tmp_path / "f2")), 500) != key
    mnist_a = ImageDataModule(partial(mnist), image_size=28, channels=1, root="/a", name="mnist")
    mnist_b = ImageDataModule(partial(mnist), image_size=28, channels=1, root="/b", name="mnist")
    assert dataset_key(mnist_a, 60000) == dataset_key(mnist_b, 60000) == "mnist-train-n60000-1x28px"
    with pytest.raises(ConfigError, match="data.name=null and no data.root"):
        dataset_key(ImageDataModule(digits, image_size=8, channels=1), 100)  # nothing to name it by


class ThreadWorld:
    """Collectives for ranks run as threads, to check the sharded code paths without processes."""

    def __init__(self, world):
        self.world, self.slots, self.barrier = world, [None] * world, threading.Barrier(world)

    def shard(self, rank):
        def exchange(t):
            self.slots[rank] = t
            self.barrier.wait()
            out = list(self.slots)
            self.barrier.wait()
            return out

        return Shard(
            rank, self.world,
            all_sum=lambda t: sum(exchange(t)),
            gather_rows=lambda t, counts: torch.cat([x[:c] for x, c in zip(exchange(t), counts)]),
        )


def test_reference_statistics_split_over_ranks_equal_the_single_process_ones(tmp_path):
    single = reference_statistics(digits_module(), StandIn(), count=99, kid_features=40)
    world, results = ThreadWorld(3), [None] * 3

    def rank_main(rank):
        results[rank] = reference_statistics(digits_module(), StandIn(), count=99, kid_features=40, cache_dir=tmp_path, shard=world.shard(rank))

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for stats in results:
        assert np.allclose(stats.mu, single.mu) and np.allclose(stats.sigma, single.sigma, atol=1e-9)
        assert np.allclose(stats.features, single.features)
    assert len(list(tmp_path.iterdir())) == 1  # written once, by rank 0


# ---- the real Inception network on MNIST ------------------------------------------------------
N = 8  # images per set: about 3 s each through Inception on this CPU


@pytest.fixture(scope="module")
def mnist_sets(tmp_path_factory):
    root = require(*MNIST, INCEPTION_WEIGHTS)
    train, test = mnist(root, train=True), mnist(root, train=False)
    sets = {
        "train": train.images[:N].permute(0, 2, 3, 1).numpy(),  # uint8 (N, 28, 28, 1): grayscale
        "test": test.images[:N].permute(0, 2, 3, 1).numpy(),
        "noise": np.random.RandomState(0).randint(0, 256, (N, 28, 28, 1)).astype(np.uint8),
    }
    extractor = InceptionFeatures(root / INCEPTION_WEIGHTS)
    features = {k: extract_features(v, extractor, batch_size=N) for k, v in sets.items()}
    stats = {k: FeatureStats.from_features(f["pool3"]) for k, f in features.items()}
    # 2048-d Frechet distances take seconds each here: compute the three the tests need once
    fid = {(a, b): frechet_distance(stats[a].mu, stats[a].sigma, stats[b].mu, stats[b].sigma)
           for a, b in (("train", "train"), ("test", "train"), ("noise", "train"))}
    return sets, features, fid, extractor, tmp_path_factory.mktemp("mnist")


def test_pool3_only_weights_give_no_inception_score_with_a_reason(mnist_sets):
    _, features, _, extractor, _ = mnist_sets
    assert not extractor.has_classifier and features["train"]["logits"] is None
    assert "fc is NaN" in extractor.no_logits_reason
    assert features["train"]["pool3"].shape == (N, 2048)


def test_fid_sanity_values_on_mnist(mnist_sets):
    _, features, fid, _, _ = mnist_sets
    # Recorded with the first 8 images of each set on the pool3 weights (benchmarks/RESULTS.md):
    # itself -1.2e-4, test vs train 125.8, uniform noise vs train 479.2. (10k vs 10k on a GPU gives
    # about 1.65 for test vs train: at 8 images the small-sample bias dominates, but the order is
    # what a broken pipeline would lose.)
    assert abs(fid["train", "train"]) < 1e-3
    assert fid["test", "train"] < 0.5 * fid["noise", "train"]
    kid = {k: kernel_inception_distance(features[k]["pool3"], features["train"]["pool3"], 1, N)[0] for k in ("test", "noise")}
    assert kid["test"] < 0.1 * kid["noise"]


def test_fid_and_kid_agree_with_torch_fidelity_on_the_same_npz_files(mnist_sets):
    import torch_fidelity

    sets, features, fid, extractor, tmp = mnist_sets
    samples, reference = save_images_npz(tmp / "samples.npz", sets["test"]), save_images_npz(tmp / "reference.npz", sets["train"])
    # our numbers for these files: the fixture's features are of exactly these arrays
    assert np.array_equal(load_npz(samples), sets["test"]) and np.array_equal(load_npz(reference), sets["train"])
    ours_kid = kernel_inception_distance(features["test"]["pool3"], features["train"]["pool3"], 3, N, seed=2020)

    class Uint8RGB(torch.utils.data.Dataset):  # what torch-fidelity takes: uint8 (3, H, W) tensors
        def __init__(self, path):
            self.x = torch.from_numpy(np.load(path)["images"]).permute(0, 3, 1, 2).expand(-1, 3, -1, -1)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i].contiguous()

    theirs = torch_fidelity.calculate_metrics(
        input1=Uint8RGB(samples), input2=Uint8RGB(reference), fid=True, kid=True, kid_subsets=3, kid_subset_size=N,
        feature_extractor_weights_path=str(extractor.weights_path), cuda=False, cache=False, save_cpu_ram=True, verbose=False,
    )
    assert fid["test", "train"] == pytest.approx(theirs["frechet_inception_distance"], rel=0.01)
    assert fid["test", "train"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)  # in fact far closer
    assert ours_kid[0] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=0.01)


# ---- the training callback --------------------------------------------------------------------
class Capture(Logger):
    name, version = "capture", 0

    def __init__(self):
        super().__init__()
        self.logged = []

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))

    def log_hyperparams(self, *args, **kwargs):
        pass


def test_fid_names_carry_the_sample_count():
    assert (fid_name(5000), fid_name(50_000), fid_name(500), fid_name(1500)) == ("val/fid_5k", "val/fid_50k", "val/fid_500", "val/fid_1500")
    assert Shard(world=4).split(10) == ([0, 3, 6, 8], [3, 3, 2, 2])


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "class-conditional"])
def test_fid_callback_logs_one_number_equal_to_an_independent_computation(tmp_path, conditional):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from ddpm.evaluation.sampling import balanced_labels
    from ddpm.runs.build import build_module
    from ddpm.diffusion.samplers import DDIMSampler

    conf = CONF
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=["model=unet_tiny", "schedule.num_timesteps=20", "data.batch_size=16", "data.num_workers=0",
                                          *(["conditioning=class"] if conditional else [])])
    module, datamodule = build_module(cfg), instantiate(cfg.data)
    extractor, logger = StandIn(), Capture()
    callback = FIDCallback(every_n_steps=2, num_samples=6, batch_size=4, sampler=DDIMSampler(3), seed=5,
                           reference_count=64, cache_dir=str(tmp_path), feature_extractor=extractor)
    # a checkpoint that monitors the FID (at step 2, not a logging step): it sees the FID only if it was published
    best = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val/fid_6", every_n_train_steps=2, save_top_k=1)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=logger, callbacks=[callback, best], log_every_n_steps=50,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=datamodule)

    fids = [(step, m["val/fid_6"]) for step, m in logger.logged if "val/fid_6" in m]
    assert len(fids) == 1 and fids[0][0] == 2
    # the same samples (chunks of 4, each seeded from (5, chunk), EMA weights, the callback's sampler)
    # scored by hand (a conditional model: balanced labels, guided at the run's scale)
    labels = balanced_labels(6, 10) if conditional else None
    chunks = [module.sample(n, torch.Generator().manual_seed(chunk_seed(5, c)), sampler=DDIMSampler(3),
                            cond=None if labels is None else labels[4 * c : 4 * c + n]) for c, n in ((0, 4), (1, 2))]
    images = to_uint8(torch.cat(chunks))
    stats = FeatureStats.from_features(extract_features(images, StandIn())["pool3"])
    ref = load_npz(tmp_path / "digits-train-n64-1x8px.npz")
    assert fids[0][1] == pytest.approx(frechet_distance(stats.mu, stats.sigma, ref.mu, ref.sigma), rel=1e-9)
    assert trainer.callback_metrics["val/fid_6"].item() == pytest.approx(fids[0][1])
    assert best.best_model_score.item() == pytest.approx(fids[0][1])
    seconds = [m["val/fid_6_seconds"] for step, m in logger.logged if "val/fid_6_seconds" in m]
    assert len(seconds) == 1 and seconds[0] > 0


def test_fid_runs_at_every_multiple_of_its_steps_once_and_not_at_the_end():
    class FakeTrainer:
        global_step = 0

    callback, trainer, steps = FIDCallback(every_n_steps=2, feature_extractor=StandIn()), FakeTrainer(), []
    callback.run = lambda trainer, pl_module: steps.append(trainer.global_step)
    for trainer.global_step in (1, 2, 2, 3, 4, 4, 5):  # a step repeats under gradient accumulation
        callback.on_train_batch_end(trainer, None, None, None, 0)
    callback.on_train_end(trainer, None)  # training stopped at step 5
    assert steps == [2, 4]
    with pytest.raises(ConfigError, match="every_n_steps >= 1"):
        FIDCallback(every_n_steps=0)


def test_the_callback_gathers_each_ranks_rows_once_and_drops_the_padding():
    class FakeTrainer:
        global_rank, world_size = 0, 2

    class FakeModule:
        device = torch.device("cpu")

        def all_gather(self, padded):  # rank 1 sent 2 rows, padded to rank 0's 3
            other = torch.tensor([[7.0], [8.0], [0.0]])
            return torch.stack([padded, other])

    shard = lightning_shard(FakeTrainer(), FakeModule())
    gathered = shard.gather_rows(torch.tensor([[1.0], [2.0], [3.0]]), [3, 2])
    assert gathered.flatten().tolist() == [1.0, 2.0, 3.0, 7.0, 8.0]
