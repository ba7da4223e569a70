"""Every shipped config loads, validates and names only registered components."""

from pathlib import Path

import pytest

from r1lab.config import load_config
from r1lab.data.validate import check_config
from r1lab.pipeline.demo import default_config_path

PRESETS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_presets_are_shipped():
    names = {p.stem for p in PRESETS}
    assert {"grpo_paper", "trl_grpo", "verl_grpo", "dapo", "dr_grpo", "ppo"} <= names


@pytest.mark.parametrize("path", [*PRESETS, default_config_path()], ids=lambda p: p.stem)
def test_preset_loads_and_names_resolve(path: Path):
    cfg = load_config(path)
    check_config(cfg)  # raises on an unknown estimator, loss, reward, template ...
    assert cfg.rollout.group_size >= 1
