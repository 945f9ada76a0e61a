"""Model registry, self-describing checkpoints, augmentation and the training loop on tiny data."""

from pathlib import Path

import numpy as np
import pytest
import torch

from hbr.augment import random_affine, warp_points
from hbr.config import AugmentConfig, RuntimeConfig, TrainConfig
from hbr.data import ClassifierSet, Preprocess, SegmenterSet
from hbr.errors import HbrError
from hbr.models import create_model, load_checkpoint, save_checkpoint
from hbr.training import epoch_rank, split_indices, train


def test_unknown_names_list_valid_ones():
    with pytest.raises(HbrError, match="valid: resnet10, resnet18, resnet34"):
        create_model({"kind": "classifier", "arch": "resnet9", "num_outputs": 2})
    with pytest.raises(HbrError, match="valid: unet"):
        create_model({"kind": "segmenter", "arch": "segformer", "encoder": "resnet18", "classes": 7})


def test_models_take_one_channel():
    clf = create_model({"kind": "classifier", "arch": "resnet18", "num_outputs": 2})
    seg = create_model({"kind": "segmenter", "arch": "unet", "encoder": "resnet18", "classes": 7})
    x = torch.zeros(2, 1, 64, 32)
    assert clf(x).shape == (2, 2)
    assert seg(x).shape == (2, 7, 64, 32)


def test_resnet10_has_one_block_a_stage_and_no_imagenet_weights(tmp_path):
    small = create_model({"kind": "classifier", "arch": "resnet10", "num_outputs": 2})
    assert all(len(getattr(small, f"layer{i}")) == 1 for i in range(1, 5))
    assert small(torch.zeros(2, 1, 64, 32)).shape == (2, 2)
    with pytest.raises(HbrError, match="no ImageNet weights exist for resnet10"):
        create_model({"kind": "classifier", "arch": "resnet10", "num_outputs": 2}, pretrained=True)
    file = tmp_path / "r10.pt"  # a file of its own architecture starts it
    torch.save(small.state_dict(), file)
    again = create_model({"kind": "classifier", "arch": "resnet10", "num_outputs": 2}, pretrained=file)
    assert torch.equal(again.state_dict()["layer4.0.conv2.weight"], small.state_dict()["layer4.0.conv2.weight"])
    with pytest.raises(HbrError, match="unknown segmenter encoder 'resnet10'; valid: resnet18, "):
        create_model({"kind": "segmenter", "arch": "unet", "encoder": "resnet10", "classes": 7})


def test_segmenter_decoder_width_is_stored_and_rebuilt(tmp_path):
    spec = {"kind": "segmenter", "arch": "unet", "encoder": "resnet18", "classes": 7, "decoder_channels": 64}
    narrow = create_model(spec)
    widths = [block.conv2[0].out_channels for block in narrow.decoder.blocks]
    assert widths == [64, 32, 16, 16, 16]
    path = tmp_path / "m.pt"
    save_checkpoint(path, narrow, {"spec": spec, "config_hash": "x"})
    loaded, _ = load_checkpoint(path)
    assert [b.conv2[0].out_channels for b in loaded.decoder.blocks] == widths
    # a spec saved before the key existed rebuilds smp's default decoder
    old = create_model({k: v for k, v in spec.items() if k != "decoder_channels"})
    assert [b.conv2[0].out_channels for b in old.decoder.blocks] == [256, 128, 64, 32, 16]
    fpn = create_model({**spec, "arch": "fpn"})
    assert fpn(torch.zeros(1, 1, 64, 32)).shape == (1, 7, 64, 32)


def test_checkpoint_round_trip_and_refusal(tmp_path):
    spec = {"kind": "classifier", "arch": "resnet18", "num_outputs": 2}
    model = create_model(spec)
    path = tmp_path / "m" / "model.pt"
    save_checkpoint(path, model, {"spec": spec, "metrics": {"auc": np.float64(0.9)}, "config_hash": "abc"})
    loaded, meta = load_checkpoint(path)
    assert meta["spec"] == spec and meta["metrics"]["auc"] == 0.9
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(HbrError, match="junk.pt: not an hbr checkpoint"):
        load_checkpoint(junk)
    torch.save({"something": torch.zeros(1)}, junk)
    with pytest.raises(HbrError, match="not an hbr checkpoint"):
        load_checkpoint(junk)


def test_earlier_checkpoint_formats_still_predict_and_retrain_once_in_run_mode(tmp_path):
    from hbr.stages.model_stage import _current_checkpoint

    spec = {"kind": "classifier", "arch": "resnet18", "num_outputs": 2}
    path = tmp_path / "m" / "model.pt"
    save_checkpoint(path, create_model(spec), {"spec": spec, "config_hash": "abc"})
    ckpt = torch.load(path, weights_only=True)
    assert _current_checkpoint(path, "abc")[0] is not None
    torch.save({**ckpt, "format": "hbr-checkpoint-1"}, path)
    model, meta = load_checkpoint(path)  # prediction with a model saved before the retrain key changed
    assert meta["format"] == "hbr-checkpoint-1"
    found, why = _current_checkpoint(path, "abc-new")
    assert found is None and "earlier hbr (hbr-checkpoint-1)" in why and "retraining once" in why
    torch.save({**ckpt, "format": "hbr-checkpoint-9"}, path)
    with pytest.raises(HbrError, match="saved by a newer hbr \\(hbr-checkpoint-9\\)"):
        load_checkpoint(path)


def test_checkpoint_missing_weights_is_refused(tmp_path):
    model = create_model({"kind": "classifier", "arch": "resnet18", "num_outputs": 2})
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, {"spec": {"kind": "classifier", "arch": "resnet18", "num_outputs": 2}})
    ckpt = torch.load(path, weights_only=True)
    del ckpt["state_dict"]["fc.bias"]
    torch.save(ckpt, path)
    with pytest.raises(HbrError, match="m.pt"):
        load_checkpoint(path)


def test_best_epoch_ties_go_to_the_lower_validation_loss():
    early = {"epoch": 1, "score": 1.01, "val_loss": 0.60}
    late = {"epoch": 9, "score": 1.01, "val_loss": 0.05}
    worse = {"epoch": 12, "score": 0.95, "val_loss": 0.01}
    assert max([early, late, worse], key=epoch_rank)["epoch"] == 9


def test_flip_swaps_left_and_right():
    """After a mirroring augmentation the patient's left landmark is still on the image right."""
    prep = Preprocess(96, 48, 96, 48)
    image = np.zeros((96, 48), np.uint8)
    shapes = {"head": np.array([[20, 5], [28, 5], [28, 15], [20, 15]], float),
              "shoulder_left": np.array([[36.0, 25.0]]), "shoulder_right": np.array([[12.0, 25.0]]),
              "hip_left": np.array([[30.0, 50.0]]), "hip_right": np.array([[18.0, 50.0]]),
              "ankle_left": np.array([[28.0, 90.0]]), "ankle_right": np.array([[20.0, 90.0]])}
    aug = AugmentConfig(rotate_deg=0, scale=0, shift=0, gamma=0, brightness=0, noise=0, hflip=1.0)
    ds = SegmenterSet([image], [shapes], list(shapes), prep, aug, seed=0, radius=2)
    _, target = ds[0]
    names = list(shapes)
    left_x = np.nonzero(target[names.index("shoulder_left")].numpy())[1].mean()
    right_x = np.nonzero(target[names.index("shoulder_right")].numpy())[1].mean()
    assert left_x > right_x  # mirrored image, channels swapped: anatomy stays consistent
    assert abs(left_x - (47 - 12)) < 1e-6  # the old right shoulder, mirrored


def test_affine_moves_points_with_the_image():
    rng = np.random.default_rng(3)
    matrix, _ = random_affine(rng, AugmentConfig(rotate_deg=10, scale=0.1, shift=0.1, hflip=0.0), 100, 60)
    pts = np.array([[10.0, 20.0], [50.0, 90.0]])
    moved = warp_points(pts, matrix)
    assert moved.shape == (2, 2) and not np.allclose(moved, pts)


def test_stratified_split_is_seeded():
    labels = [0] * 20 + [1] * 10
    a = split_indices(30, 0.2, seed=1, stratify=labels)
    assert a == split_indices(30, 0.2, seed=1, stratify=labels)
    assert len(a[1]) == 6 and sum(labels[i] for i in a[1]) == 2


def test_training_loop_learns_a_trivial_task():
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(24):
        img = rng.integers(0, 30, (64, 64)).astype(np.uint8)
        if i % 2:
            img[5:20, 8:24] = 240
        images.append(img)
        labels.append(i % 2)
    # 64x64: a 64x32 input (1-pixel-wide deepest layer) trains nondeterministically in
    # bfloat16 on CPUs with AMX (see hbr.config.MIN_BF16_INPUT_SIDE)
    prep = Preprocess(64, 64, 64, 64)
    from hbr.stages.classify import ClassifierObjective

    torch.manual_seed(0)
    model = create_model({"kind": "classifier", "arch": "resnet18", "num_outputs": 2})
    cfg = TrainConfig(epochs=6, batch_size=8, lr=0.003, workers=0)
    result = train(model, ClassifierSet(images[:16], labels[:16], prep, AugmentConfig(), 0),
                   ClassifierSet(images[16:], labels[16:], prep, None, 0), ClassifierObjective(labels[:16]),
                   cfg, torch.device("cpu"), RuntimeConfig(), log=lambda s: None)
    assert result.metrics["balanced_accuracy"] == 1.0
    assert len(result.history) == 6



def test_time_limit_stops_training_with_the_schedule_run_out():
    """A run cut short by its time limit fast-forwards the learning rate to the end of its cycle."""
    from hbr.stages.classify import ClassifierObjective

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 200, (32, 16)).astype(np.uint8) for _ in range(12)]
    labels = [i % 2 for i in range(12)]
    prep = Preprocess(32, 16, 32, 16)
    model = create_model({"kind": "classifier", "arch": "resnet18", "num_outputs": 2})
    cfg = TrainConfig(epochs=500, batch_size=4, workers=0, time_limit_min=0.02)
    lines = []
    result = train(model, ClassifierSet(images, labels, prep, None, 0), None, ClassifierObjective(labels),
                   cfg, torch.device("cpu"), RuntimeConfig(cpu_bf16=False), log=lines.append)
    assert len(result.history) < 500
    assert any("time limit" in line for line in lines)
    assert result.metrics["epoch"] == len(result.history)  # no validation: the last epoch's weights


def test_training_logs_progress_within_an_epoch_and_each_warning_once(monkeypatch):
    """Lines within an epoch (here every step: HBR_PROGRESS_SECONDS=0) with the ETA of the whole
    training; a warning raised every epoch (e.g. scikit-learn's on a small validation set) is
    logged once, not once per epoch."""
    import warnings

    from hbr.stages.classify import ClassifierObjective

    monkeypatch.setenv("HBR_PROGRESS_SECONDS", "0")

    class Warning_(ClassifierObjective):
        def metrics(self, outputs, targets):
            warnings.warn("y_pred contains classes not in y_true", UserWarning)
            return super().metrics(outputs, targets)

    rng = np.random.default_rng(2)
    images = [rng.integers(0, 200, (32, 16)).astype(np.uint8) for _ in range(12)]
    labels = [i % 2 for i in range(12)]
    prep = Preprocess(32, 16, 32, 16)
    model = create_model({"kind": "classifier", "arch": "resnet18", "num_outputs": 2})
    cfg = TrainConfig(epochs=3, batch_size=4, workers=0)
    lines = []
    train(model, ClassifierSet(images[:8], labels[:8], prep, None, 0),
          ClassifierSet(images[8:], labels[8:], prep, None, 0), Warning_(labels[:8]), cfg, torch.device("cpu"), RuntimeConfig(cpu_bf16=False), log=lines.append)
    steps = [line for line in lines if ": step " in line]
    assert steps[0].startswith("epoch 1/3: step 1/2, loss ") and "steps/s; training ETA " in steps[0], steps
    assert len(steps) == 6  # 3 epochs x 2 steps
    epochs = [line for line in lines if line.startswith("epoch ") and ": step" not in line]
    assert "(training ETA " in epochs[0] and "ETA" not in epochs[-1]
    assert sum("y_pred contains classes not in y_true" in line for line in lines) == 1
    assert all("\r" not in line for line in lines)


def test_invert_augmentation_shows_the_other_background():
    prep = Preprocess(16, 8, 16, 8)
    image = np.zeros((16, 8), np.uint8)
    image[4:12, 2:6] = 200
    still = AugmentConfig(rotate_deg=0, scale=0, shift=0, gamma=0, brightness=0, noise=0, hflip=0, invert=1.0)
    x, label = ClassifierSet([image], [1], prep, still, seed=0, background=(0, 252))[0]
    expected = prep.to_tensor((252 - image).astype(np.float32) / 255)
    assert label == 1 and torch.allclose(x, expected, atol=1e-6)
    plain, _ = ClassifierSet([image], [1], prep, None, seed=0)[0]  # validation: never inverted
    assert torch.allclose(plain, prep.to_tensor(image.astype(np.float32) / 255), atol=1e-6)


def test_prediction_workers_start_after_opencv_used_its_threads(tmp_path):
    """`run` mode trains (OpenCV warps with its thread pool) and then predicts with
    DataLoader workers forked from the same process: the workers must not hang.
    In a subprocess with a timeout, so a deadlock fails the test instead of the suite."""
    import subprocess
    import sys
    from pathlib import Path

    script = """
import cv2, numpy as np, torch
from hbr.config import RuntimeConfig
from hbr.data import PredictionSet, Preprocess
from hbr.files import write_npy
from hbr.prediction import predict_batches
import sys
folder = sys.argv[1]
cv2.warpAffine(np.zeros((2000, 2000), np.float32), np.eye(2, 3), (2000, 2000))  # starts OpenCV's threads
paths = []
for i in range(4):
    paths.append(f"{folder}/{i}.npy")
    write_npy(paths[-1], np.full((120, 50), i, np.uint8))
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(2))
out = [o for o, _ in predict_batches(model, PredictionSet(paths, Preprocess(96, 40, 48, 20)), 2, 1,
                                      torch.device("cpu"), RuntimeConfig(cpu_bf16=False))]
print(sum(len(o) for o in out))
"""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=repo, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "4"


def batched(model, x: torch.Tensor, size: int) -> torch.Tensor:
    """The model's outputs for `x` in batches of `size`, the last one padded to it."""
    with torch.no_grad():
        outs = []
        for i in range(0, len(x), size):
            part = x[i : i + size]
            padded = torch.cat([part, part.new_zeros((size - len(part), *part.shape[1:]))])
            outs.append(model(padded)[: len(part)])
        return torch.cat(outs)


def test_an_image_gets_the_same_bits_whichever_images_share_its_batch():
    """The last image of a run alone, or beside others: the same outputs, bit for bit (the
    short batch is padded), so a sharded run predicts exactly what one machine does."""
    from hbr.prediction import predict_batches

    torch.manual_seed(0)
    model = create_model({"kind": "classifier", "arch": "resnet18", "num_outputs": 2}).eval()
    x = torch.randn(5, 1, 64, 64)
    runtime = RuntimeConfig(cpu_bf16=False)

    def outputs(indices):
        items = [(x[i], i) for i in indices]
        return torch.cat([out for out, _ in predict_batches(model, items, 4, 0, torch.device("cpu"), runtime)])

    everything = outputs(range(5))  # 4 + 1
    assert torch.equal(outputs([4]), everything[4:])
    assert torch.equal(outputs([3, 4]), everything[3:])
    assert torch.equal(outputs([0, 4, 2]), everything[[0, 4, 2]])


def test_cpu_lanes_give_the_batches_of_one_loop_in_order():
    """workers=0 on a CPU predicts in lanes (threads): same outputs, same order, all items once."""
    from hbr.prediction import CPU_LANES, predict_batches

    torch.manual_seed(0)
    model = create_model({"kind": "classifier", "arch": "resnet18", "num_outputs": 2}).eval()
    x = torch.randn(11, 1, 64, 64)

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i], i

    runtime = RuntimeConfig(cpu_bf16=False)
    got = list(predict_batches(model, Items(), 2, 0, torch.device("cpu"), runtime))
    assert len(got) == 6 > CPU_LANES + 1  # more batches than lanes: results wait in order
    assert torch.cat([rest[0] for _, rest in got]).tolist() == list(range(11))
    assert torch.equal(torch.cat([out for out, _ in got]), batched(model, x, 2))
    first = next(iter(predict_batches(model, Items(), 2, 0, torch.device("cpu"), runtime)))  # stopped early
    assert first[1][0].tolist() == [0, 1]


def test_cpu_lanes_return_freed_memory_every_few_batches(monkeypatch):
    """Long CPU predictions hand freed memory back to the system every TRIM_EVERY batches."""
    import hbr.memory
    import hbr.prediction as prediction

    calls = []
    monkeypatch.setattr(prediction, "TRIM_EVERY", 3)
    monkeypatch.setattr(hbr.memory, "release_freed_memory", lambda: calls.append(1))
    items = [(torch.zeros(2), i) for i in range(20)]  # 10 batches of 2
    got = list(prediction.predict_batches(torch.nn.Identity(), items, 2, 0, torch.device("cpu"),
                                          RuntimeConfig(cpu_bf16=False)))
    assert len(got) == 10 and len(calls) == 3  # after batches 3, 6 and 9


@pytest.mark.parametrize("workers", [0, 1])
def test_prediction_waits_for_a_model_still_being_built(tmp_path: Path, workers):
    """A stage's model is built in a thread while the first images are prepared
    (obtain_model gives a Future): the outputs are those of the built model; a build
    that fails stops the prediction with its own error."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from hbr.models import model_from_checkpoint, read_checkpoint
    from hbr.prediction import predict_batches

    torch.manual_seed(0)
    spec = {"kind": "classifier", "arch": "resnet18", "num_outputs": 2}
    model = create_model(spec).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, {"spec": spec})
    x = torch.randn(5, 1, 64, 64)
    runtime = RuntimeConfig(cpu_bf16=False)
    items = [(x[i], i) for i in range(len(x))]
    with ThreadPoolExecutor(1) as pool:
        building = pool.submit(lambda: model_from_checkpoint(read_checkpoint(path), path))
        got = torch.cat([out for out, _ in predict_batches(building, items, 2, workers, torch.device("cpu"), runtime)])
    assert torch.equal(got, batched(model, x, 2))
    broken: Future = Future()
    broken.set_exception(HbrError("model.pt: weights do not fit"))
    with pytest.raises(HbrError, match="weights do not fit"):
        list(predict_batches(broken, items, 2, workers, torch.device("cpu"), runtime))


def test_a_damaged_image_is_marked_unreadable_and_the_rest_predicted(tmp_path: Path, capsys):
    """Empty, truncated or foreign .npy files give ok=False with a line naming them, not a crash."""
    from hbr.data import PredictionSet
    from hbr.files import write_npy

    prep = Preprocess(96, 40, 48, 20)
    good = tmp_path / "good.npy"
    write_npy(good, np.full((90, 30), 7, np.uint8))
    empty, truncated, foreign = tmp_path / "empty.npy", tmp_path / "truncated.npy", tmp_path / "foreign.npy"
    empty.write_bytes(b"")
    truncated.write_bytes(good.read_bytes()[:-10])
    foreign.write_bytes(b"PK\x03\x04 not an image")
    items = PredictionSet([empty, good, truncated, foreign], prep)
    oks = [items[i][2] for i in range(4)]
    assert oks == [False, True, False, False]
    assert items[1][3].tolist() == [90, 30]
    out = capsys.readouterr().out
    assert all(f"{p}: cannot read image" in out for p in (empty, truncated, foreign))


def test_time_limit_running_out_between_epochs_is_reported(monkeypatch):
    """The clock can pass the limit after one epoch's end check and before the next epoch's
    first step: training stops there, says why, and keeps the finished epoch."""
    import types

    import hbr.training
    from hbr.stages.classify import ClassifierObjective

    clock = [0.0]
    monkeypatch.setattr(hbr.training, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))

    class JumpAtSecondEpoch(ClassifierSet):
        def set_epoch(self, epoch):
            super().set_epoch(epoch)
            if epoch == 1:
                clock[0] = 3600.0  # the limit (1.2 s) passes between the two epochs

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 200, (32, 16)).astype(np.uint8) for _ in range(8)]
    labels = [i % 2 for i in range(8)]
    model = create_model({"kind": "classifier", "arch": "resnet18", "num_outputs": 2})
    cfg = TrainConfig(epochs=5, batch_size=4, workers=0, time_limit_min=0.02)
    lines = []
    result = train(model, JumpAtSecondEpoch(images, labels, Preprocess(32, 16, 32, 16), None, 0), None,
                   ClassifierObjective(labels), cfg, torch.device("cpu"), RuntimeConfig(cpu_bf16=False), log=lines.append)
    assert [r["epoch"] for r in result.history] == [1] and result.metrics["epoch"] == 1
    assert any("time limit" in line and "after epoch 1" in line for line in lines)


@pytest.mark.parametrize("spec", [
    {"kind": "classifier", "arch": "resnet18", "num_outputs": 2},
    {"kind": "segmenter", "arch": "unet", "encoder": "resnet18", "classes": 7},
])
def test_inference_weights_cast_once_give_the_outputs_of_autocast(spec):
    """On a CPU with bfloat16, prediction casts conv and linear weights once instead of in
    every forward pass: the outputs are the same bit for bit, and training keeps float32."""
    from hbr.devices import autocast, batch_to_device, to_device, to_device_for_inference

    torch.manual_seed(0)
    model = create_model(spec).eval()
    with torch.no_grad():  # a trained-looking model: batch norm statistics away from 0 and 1
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    cpu, bf16 = torch.device("cpu"), RuntimeConfig(cpu_bf16=True)
    reference = to_device(create_model(spec).eval(), cpu, bf16)
    reference.load_state_dict(model.state_dict())
    cast = to_device_for_inference(model, cpu, bf16)
    layers = [m for m in cast.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert layers and all(m.weight.dtype == torch.bfloat16 for m in layers)
    assert {p.dtype for p in cast.parameters()} == {torch.bfloat16, torch.float32}  # batch norm stays float32
    assert {p.dtype for p in reference.parameters()} == {torch.float32}
    x = batch_to_device(torch.randn(3, 1, 64, 64), cpu, bf16)
    with torch.inference_mode(), autocast(cpu, bf16):
        assert torch.equal(cast(x).float(), reference(x).float())
    plain = to_device_for_inference(create_model(spec), cpu, RuntimeConfig(cpu_bf16=False))
    assert {p.dtype for p in plain.parameters()} == {torch.float32}


def test_initialisers_are_skipped_only_inside_the_build():
    """Networks rebuilt from a checkpoint skip random initialisation (the file has the
    weights); other operations, and initialisers outside the build, still work."""
    from hbr.models import _InitialisersSkipped

    t = torch.zeros(3, 4)
    with _InitialisersSkipped():
        torch.nn.init.kaiming_normal_(t)
        torch.nn.init.constant_(t, 5.0)
        t.normal_()
        assert torch.equal(t + 1, torch.ones(3, 4))
    assert not t.any()
    torch.nn.init.constant_(t, 5.0)
    assert (t == 5).all()


# --- start weights: false, true/imagenet (local torch hub cache) or a file the user has ------------

CLASSIFIER18 = {"kind": "classifier", "arch": "resnet18", "num_outputs": 2}
UNET18 = {"kind": "segmenter", "arch": "unet", "encoder": "resnet18", "classes": 7}


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A torchvision resnet18 state dict (3-channel stem, 1000-class fc) saved with torch.save."""
    import torchvision

    torch.manual_seed(5)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(state, path)
    return path, state


def test_classifier_starts_from_a_torchvision_state_dict_file(resnet18_file):
    path, state = resnet18_file
    model = create_model(CLASSIFIER18, pretrained=str(path))
    got = model.state_dict()
    assert torch.equal(got["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))  # RGB -> 1-channel stem
    assert torch.equal(got["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    assert torch.equal(got["bn1.running_var"], state["bn1.running_var"])
    assert got["fc.weight"].shape == (2, 512)  # the 1000-class head was dropped, not loaded
    scratch = create_model(CLASSIFIER18, pretrained=False).state_dict()
    assert not torch.equal(scratch["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])


def test_unet_encoder_starts_from_a_resnet_or_an_encoder_state_dict(resnet18_file, tmp_path):
    from hbr.models import _InitialisersSkipped

    path, state = resnet18_file
    with _InitialisersSkipped():  # random initialisation is overwritten here: skipped to keep the test fast
        encoder = create_model(UNET18, pretrained=path).encoder.state_dict()
    assert torch.equal(encoder["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(encoder["layer3.0.downsample.0.weight"], state["layer3.0.downsample.0.weight"])
    own = tmp_path / "encoder.pt"  # an encoder state dict, as a U-Net's encoder saves it (1-channel stem)
    torch.save(encoder, own)
    with _InitialisersSkipped():
        again = create_model(UNET18, pretrained=str(own)).encoder.state_dict()
    assert all(torch.equal(again[k], v) for k, v in encoder.items())


def test_imagenet_weights_come_only_from_the_local_cache(resnet18_file, tmp_path, monkeypatch, capsys):
    import torchvision

    path, state = resnet18_file
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    create_model(CLASSIFIER18, pretrained=True)  # nothing cached: from scratch, said once, nothing downloaded
    assert "no local ImageNet weights for resnet18" in capsys.readouterr().err
    cached = tmp_path / "hub" / "checkpoints" / Path(torchvision.models.ResNet18_Weights.DEFAULT.url).name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    for value in (True, "imagenet"):
        got = create_model(CLASSIFIER18, pretrained=value).state_dict()
        assert torch.equal(got["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_weights_that_do_not_fit_are_refused_naming_the_file(resnet18_file, tmp_path):
    import torchvision

    from hbr.models import _InitialisersSkipped

    path, state = resnet18_file
    r34 = tmp_path / "resnet34.pt"
    with _InitialisersSkipped():  # only the names and shapes matter here: random initialisation skipped
        torch.save(torchvision.models.resnet34(weights=None).state_dict(), r34)
    with pytest.raises(HbrError, match=r"resnet34.pt: resnet18 weights expected; \d+ keys unexpected, "
                                       r"first: layer1\.2\.conv1\.weight$"):
        create_model(CLASSIFIER18, pretrained=r34)
    with pytest.raises(HbrError, match=r"resnet18.pt: resnet34 encoder weights expected; \d+ keys missing, "
                                       r"first: layer1\.2\.conv1\.weight$"), _InitialisersSkipped():
        create_model({**UNET18, "encoder": "resnet34"}, pretrained=path)
    reshaped = tmp_path / "reshaped.pt"
    torch.save({**state, "layer2.0.conv1.weight": torch.zeros(128, 64, 5, 5)}, reshaped)
    with pytest.raises(HbrError, match=r"reshaped.pt: resnet18 weights expected; 1 key of another shape, first: "
                                       r"layer2\.0\.conv1\.weight \(128, 64, 5, 5\) instead of \(128, 64, 3, 3\)"):
        create_model(CLASSIFIER18, pretrained=reshaped)
    with pytest.raises(HbrError, match=r"absent.pt: pretrained weights file not found"):
        create_model(CLASSIFIER18, pretrained=tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not weights")
    with pytest.raises(HbrError, match=r"junk.pt: not a PyTorch weights file"):
        create_model(CLASSIFIER18, pretrained=junk)
    torch.save({"epoch": 3}, junk)
    with pytest.raises(HbrError, match=r"junk.pt: not a state dict"):
        create_model(UNET18, pretrained=junk)


def test_pretrained_config_takes_booleans_imagenet_or_a_path():
    from hbr.config import ConfigError, load_config

    def value(text, section="classifier"):
        return getattr(load_config(None, [f"{section}.pretrained={text}"]), section).pretrained

    assert value("true") is True and value("imagenet") is True and value("false") is False
    assert value("/data/resnet18.pt", "segmenter") == "/data/resnet18.pt" and value("w/enc") == "w/enc"
    with pytest.raises(ConfigError, match=r"classifier.pretrained: 'auto' is not true, false, imagenet or a weights"):
        value("auto")
