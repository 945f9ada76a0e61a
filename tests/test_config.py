"""Config loading, overrides and the rejection of unknown keys."""

import pytest

from hbr.cli import DEFAULT_CONFIG, REPO_ROOT
from hbr.config import (
    Config,
    ConfigError,
    dump_config,
    has_native_bf16,
    load_config,
    this_cpu_has_native_bf16,
    valid_keys,
)


def test_default_yaml_equals_builtin_defaults():
    assert load_config(DEFAULT_CONFIG) == Config()


def test_demo_yaml_is_small():
    cfg = load_config(REPO_ROOT / "configs" / "demo.yaml")
    assert cfg.classifier.arch == "resnet10"
    assert cfg.segmenter.encoder == "resnet18" and cfg.segmenter.decoder_channels < Config().segmenter.decoder_channels
    assert cfg.canvas == Config().canvas


def test_override_types_and_nesting():
    cfg = load_config(DEFAULT_CONFIG, ["classifier.train.epochs=3", "segmenter.save_npy=true", "dicom.protocol=Total Body"])
    assert cfg.classifier.train.epochs == 3
    assert cfg.segmenter.save_npy is True
    assert cfg.dicom.protocol == "Total Body"
    assert cfg.segmenter.train.epochs == Config().segmenter.train.epochs  # sections do not leak


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["classifier.trian.epochs=3"])
    assert "classifier.trian" in str(err.value) and "classifier.train.epochs" in str(err.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("canvas:\n  hieght: 5\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*canvas.hieght.*canvas.height"):
        load_config(bad)


@pytest.mark.parametrize("override", ["classifier.train.epochs=three", "segmenter.save_npy=maybe", "canvas=5", "noequals"])
def test_bad_values_are_refused(override):
    with pytest.raises(ConfigError):
        load_config(None, [override])


def test_frozen_and_round_trip(tmp_path):
    cfg = load_config(None, ["predict.batch_size=3"])
    with pytest.raises(AttributeError):
        cfg.predict.batch_size = 4
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    assert "runtime.cpu_bf16" in valid_keys()


def test_small_bf16_inputs_are_refused_and_fp32_allows_them():
    """A 1-pixel-wide deepest layer trains nondeterministically in bfloat16 on AMX CPUs."""
    with pytest.raises(ConfigError, match=r"segmenter.input_width = 32.*at least 64.*cpu_bf16=false"):
        load_config(None, ["segmenter.input_width=32", "runtime.cpu_bf16=true"])
    cfg = load_config(None, ["segmenter.input_width=32", "runtime.cpu_bf16=false"])
    assert cfg.segmenter.input_width == 32
    assert load_config(None, ["classifier.input_height=64", "classifier.input_width=64"]).classifier.input_width == 64


@pytest.mark.parametrize("key", ["batch_size", "segmenter_batch_size", "chunk_size"])
def test_prediction_batches_and_chunks_must_hold_an_image(key):
    with pytest.raises(ConfigError, match=rf"predict.{key} = 0: must be at least 1"):
        load_config(None, [f"predict.{key}=0"])
    assert getattr(load_config(None, [f"predict.{key}=1"]).predict, key) == 1


@pytest.mark.parametrize("flags, native", [
    ("fpu sse2 avx avx2 fma", False),  # AVX2 only: bfloat16 emulated, several times slower
    ("avx2 avx512f avx512bw avx512_bf16", True),
    ("avx2 avx512f amx_bf16 amx_tile", True),
])
def test_bf16_only_where_the_cpu_has_it(flags, native):
    assert has_native_bf16(flags.split()) is native


def test_cpu_bf16_auto_follows_this_cpu_and_true_false_override_it():
    assert load_config(None).runtime.cpu_bf16 is this_cpu_has_native_bf16()
    assert load_config(None, ["runtime.cpu_bf16=auto"]).runtime.cpu_bf16 is this_cpu_has_native_bf16()
    assert load_config(DEFAULT_CONFIG).runtime.cpu_bf16 is this_cpu_has_native_bf16()
    assert load_config(None, ["runtime.cpu_bf16=true"]).runtime.cpu_bf16 is True
    assert load_config(None, ["runtime.cpu_bf16=off"]).runtime.cpu_bf16 is False
    with pytest.raises(ConfigError, match=r"runtime.cpu_bf16: 'sometimes' is not a valid bool \(or auto\)"):
        load_config(None, ["runtime.cpu_bf16=sometimes"])
    with pytest.raises(ConfigError, match=r"classifier.pretrained: 'auto' is not true, false, imagenet or a weights file path"):
        load_config(None, ["classifier.pretrained=auto"])


def test_set_error_names_the_set_and_suggests_the_key():
    """A bad key given with --set is blamed on that --set (not the config file), with the
    nearest valid key and a handful of the section's keys instead of all of them."""
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT_CONFIG, ["classifier.epochs=3"])
    message = str(err.value)
    assert message.startswith("--set classifier.epochs=3: ") and str(DEFAULT_CONFIG) not in message
    assert "did you mean classifier.train.epochs?" in message
    assert message.count(", ") < 15 and "configs/default.yaml" in message  # not all ~90 keys
    with pytest.raises(ConfigError, match=r"^--set canvas=5: canvas is a section.*canvas.height"):
        load_config(None, ["canvas=5"])


def test_file_error_is_blamed_on_the_file_and_set_error_on_the_set(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("classifier:\n  train: {epochs: 0}\n")
    with pytest.raises(ConfigError, match=rf"^{config}: classifier.train.epochs = 0: must be at least 1"):
        load_config(config, ["predict.batch_size=4"])
    assert load_config(config, ["classifier.train.epochs=2"]).classifier.train.epochs == 2  # --set fixes it
    config.write_text("segmenter:\n  threshold: 0.3\n")
    with pytest.raises(ConfigError, match=r"^--set segmenter.mask_floor=0.4: segmenter.mask_floor = 0.4"):
        load_config(config, ["segmenter.mask_floor=0.4"])


@pytest.mark.parametrize("override, requirement", [
    ("classifier.body.threshold=1.5", "must be auto or a number in [0, 1]"),
    ("classifier.pose.threshold=-0.1", "must be auto or a number in [0, 1]"),
    ("segmenter.threshold=1", "must be in [0, 1)"),
    ("classifier.train.epochs=0", "must be at least 1"),
    ("segmenter.train.batch_size=0", "must be at least 1"),
    ("classifier.train.val_fraction=1", "must be in [0, 1)"),
    ("segmenter.train.lr=0", "must be positive"),
    ("classifier.train.min_images=0", "must be at least 1"),
    ("canvas.height=0", "must be at least 1"),
    ("segmenter.input_width=0", "must be at least 1"),
    ("dicom.max_member_mb=0", "must be positive"),
    ("dicom.workers=-1", "must be 0 or more"),
    ("classifier.augment.hflip=2", "must be in [0, 1]"),
    ("classifier.folds=1", "must be 0 (no folds) or at least 2"),
    ("background.white=0", "must differ"),
])  # fmt: skip
def test_values_out_of_range_are_refused_naming_the_set(override, requirement):
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT_CONFIG, [override, "runtime.cpu_bf16=false"])
    assert str(err.value).startswith(f"--set {override}") and requirement in str(err.value), str(err.value)


def test_demo_and_default_configs_are_in_range():
    for name in ("default.yaml", "demo.yaml"):
        load_config(REPO_ROOT / "configs" / name)
