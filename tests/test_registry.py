"""The stage registry (hbr.pipeline): upstream's names, the driver's plan, the entry scripts,
and the retrain key derived from the config."""

import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from hbr import pipeline
from hbr.config import ClassifierConfig, Config, config_hash, default_yaml, key, training_values, valid_keys
from hbr.pipeline import BACKGROUNDS, STAGES

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_upstream_names_are_the_compatibility_contract():
    # the names users' work directories and label folders already have (SPEC 2 and 4)
    s = pipeline.stage
    assert [st.script for st in STAGES] == [
        "1_dcm2img.py", "2_body_class.py", "3_crop_class.py", "4_background_class.py",
        "5_contrast_class.py", "6_pose_class.py", "7_segment.py", "8_cal_segment.py"]
    assert s(2).output() == "2_class_predicted" and s(2).table_name() == "2_class_pred.tsv"
    assert s(3).output() == "3_crop_predicted" and s(3).label_names() == ["3_crop_label.tsv"]
    assert s(4).output("white") == "4_bak_white" and s(4).table_name() == "4_background.tsv"
    assert s(5).table_name("black") == "5_contrast_black_pred.tsv"
    assert s(6).label_names("white") == ["6_pose_white_label.tsv"]
    assert s(7).label_names("black") == ["7_segment_black", "7_segment_masked_black_direct/in"]
    assert s(7).run_name("white") == "7_segment_white"
    assert pipeline.mask_folder(Path("w"), "head", "black") == Path("w/7_segment_predicted_head_black")
    assert pipeline.segment_table_path(Path("w"), "white") == Path("w/8_segment_result/segment_table_white.tsv")
    assert pipeline.image_folders(Path("w"), pipeline.TOTAL_BODY) == (Path("w/1_Total_Body_npy"),
                                                                      Path("w/1_Total_Body_png"))


def test_each_stage_reads_what_the_one_before_writes():
    for st in STAGES[1:]:
        assert pipeline.producer(st).number < st.number
    assert [pipeline.producer(pipeline.stage(n)).number for n in (2, 3, 4, 5, 6, 7, 8)] == [1, 2, 3, 4, 5, 6, 6]


def test_lookups_and_unknown_stages():
    assert pipeline.stage("pose") is pipeline.stage(6) is pipeline.stage("6_pose_class")
    with pytest.raises(KeyError, match="valid: 1 \\(1_dcm2img\\)"):
        pipeline.stage(9)
    with pytest.raises(ValueError, match="give a background"):
        pipeline.stage(5).table_name()


def test_classifier_stages_say_what_label_1_means():
    for st in pipeline.CLASSIFIERS.values():
        assert st.keep_label in (0, 1) and all(st.meaning) and st.question.endswith("?")
    assert pipeline.stage("body").keep_label == 1 and pipeline.stage("crop").keep_label == 0


def test_every_entry_script_runs_its_registered_module():
    # a script names its stage by its own file name; hbr.cli.entry parses the command line
    # from the registry, then imports the stage's module and calls its run()
    for st in STAGES:
        script = (REPO_ROOT / st.script).read_text()
        assert "from hbr.cli import entry" in script and "entry(Path(__file__).stem)" in script, st.script
        assert pipeline.stage(Path(st.script).stem) is st
        module = importlib.import_module(st.module)
        assert callable(module.run) and callable(module.main)


def test_driver_runs_the_registry_plan():
    plan = subprocess.run([sys.executable, "-m", "hbr.pipeline", "plan"], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=True).stdout.splitlines()
    assert plan == pipeline.plan_lines()
    runs = [line.split("\t") for line in plan]
    assert [r[1] for r in runs[:4]] == ["1_dcm2img", "2_body_class", "3_crop_class", "4_background_class"]
    assert [r[1] for r in runs[4:]] == [f"{n}_{b}" for b in BACKGROUNDS
                                         for n in ("5_contrast_class", "6_pose_class", "7_segment", "8_cal_segment")]
    driver = (REPO_ROOT / "0_pipeline.sh").read_text()
    assert "hbr.pipeline plan" in driver
    for st in STAGES:  # no stage is named in the driver: all come from the plan
        assert st.script not in driver


def test_default_yaml_is_generated_from_the_dataclasses():
    assert (REPO_ROOT / "configs" / "default.yaml").read_text() == default_yaml(), \
        "configs/default.yaml is stale: python -m hbr.config > configs/default.yaml"
    text = default_yaml()
    for dotted in valid_keys():
        leaf = dotted.rsplit(".", 1)[-1]
        assert any(line.strip().startswith(f"{leaf}:") and "  # " in line for line in text.splitlines()), dotted


def test_a_new_training_key_changes_the_retrain_key_and_a_prediction_key_does_not():
    base = ClassifierConfig()
    assert "threshold" not in training_values(base)["pose"] and "epochs" in training_values(base)["train"]
    # a key added later, not marked predict-only, counts without anyone listing it
    extended = dataclasses.make_dataclass(
        "Extended", [("new_setting", int, key(3, "a new training setting"))], bases=(ClassifierConfig,), frozen=True)
    assert config_hash(training_values(extended())) != config_hash(training_values(base))
    changed = dataclasses.replace(base, pose=dataclasses.replace(base.pose, threshold="0.9"))
    assert config_hash(training_values(changed)) == config_hash(training_values(base))
    assert config_hash(training_values(dataclasses.replace(base, arch="resnet34"))) != \
        config_hash(training_values(base))


def test_each_classifier_stage_has_its_settings_and_only_its_own_retrain_it():
    from hbr.stages.classify import stage_training_values

    c = ClassifierConfig()
    assert set(c.stage_names()) == set(pipeline.CLASSIFIERS)
    other = dataclasses.replace(c, pose=dataclasses.replace(c.pose, region="whole"))
    assert config_hash(stage_training_values(other, "crop")) == config_hash(stage_training_values(c, "crop"))
    assert config_hash(stage_training_values(other, "pose")) != config_hash(stage_training_values(c, "pose"))


def test_segmenter_prediction_keys_never_retrain():
    s = Config().segmenter
    values = training_values(s)
    assert {"threshold", "mask_floor", "save_npy"}.isdisjoint(values) and "point_radius" in values
