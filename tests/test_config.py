from pathlib import Path

import pytest

from r1lab.config import ConfigError, RunConfig, apply_overrides, load_config, save_config


def test_unknown_key_is_rejected_and_named():
    with pytest.raises(ConfigError, match=r"rollout\.group_sise: unknown key"):
        RunConfig.model_validate({"rollout": {"group_sise": 8}})


def test_unknown_section_is_rejected_and_named():
    with pytest.raises(ConfigError, match=r"^rolout: unknown key"):
        RunConfig.model_validate({"rolout": {}})


def test_wrong_type_is_rejected_and_named():
    with pytest.raises(ConfigError, match=r"optim\.lr: .*number"):
        RunConfig.model_validate({"optim": {"lr": "fast"}})
    with pytest.raises(ConfigError, match=r"train\.steps"):
        RunConfig.model_validate({"train": {"steps": 0}})


def test_overrides_parse_yaml_values_and_scientific_floats():
    raw = apply_overrides({"rollout": {"group_size": 8}},
                          ["rollout.group_size=16", "optim.lr=3e-4", "rollout.stop=[\"\\n\\n\"]",
                           "model.path=/models/qwen"])
    assert raw == {"rollout": {"group_size": 16, "stop": ["\n\n"]}, "optim": {"lr": 0.0003},
                   "model": {"path": "/models/qwen"}}
    with pytest.raises(ConfigError, match="expected section.key=value"):
        apply_overrides({}, ["rollout.group_size"])


def test_override_of_unknown_key_fails_before_work(tmp_path: Path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("rollout:\n  group_size: 4\n")
    cfg = load_config(cfg_file, ["train.steps=7"])
    assert (cfg.rollout.group_size, cfg.train.steps) == (4, 7)
    with pytest.raises(ConfigError, match=r"train\.stepz: unknown key"):
        load_config(cfg_file, ["train.stepz=7"])


def test_resolved_config_round_trips(tmp_path: Path):
    cfg = load_config(None, ["rollout.group_size=3", "algorithm.beta=0.04"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert again.rollout.group_size == 3 and again.algorithm.beta == 0.04


def test_missing_and_malformed_files_are_clear(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(bad)
