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


# ---- configs/trl_grpo.yaml against TRL's own defaults ----------------------------------------


def _dataclass_defaults(path: Path, class_name: str) -> dict[str, object]:
    """Literal defaults of a dataclass's fields, read from its source (no import: trl is slow)."""
    import ast
    import contextlib

    tree = ast.parse(path.read_text())
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == class_name)
    out: dict[str, object] = {}
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value):
            continue
        value = node.value
        if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "field":
            value = next((k.value for k in value.keywords if k.arg == "default"), None)
        # a non-literal default (a factory, an enum member) is not compared here
        with contextlib.suppress(ValueError):
            out[node.target.id] = ast.literal_eval(value) if value is not None else None
    return out


def _trl_defaults() -> dict[str, object]:
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("trl")
    tf = importlib.util.find_spec("transformers")
    if spec is None or tf is None:
        pytest.skip("trl not installed")
    version = importlib.metadata.version("trl")
    if not version.startswith("1.16."):
        pytest.skip(f"configs/trl_grpo.yaml documents trl 1.16; installed {version}")
    trainer = Path(spec.origin).parent / "trainer"
    defaults = _dataclass_defaults(Path(tf.origin).parent / "training_args.py", "TrainingArguments")
    defaults |= _dataclass_defaults(trainer / "base_config.py", "_BaseConfig")
    return defaults | _dataclass_defaults(trainer / "grpo_config.py", "GRPOConfig")


def test_trl_preset_is_trl_defaults():
    """Every objective setting of configs/trl_grpo.yaml is the r1lab spelling of a TRL default."""
    trl = _trl_defaults()
    cfg = load_config(Path(__file__).parents[1] / "configs" / "trl_grpo.yaml")
    alg, roll, opt = cfg.algorithm, cfg.rollout, cfg.optim
    eps_high = trl["epsilon"] if trl["epsilon_high"] is None else trl["epsilon_high"]
    assert (alg.eps_low, alg.eps_high, alg.clip_delta) == (trl["epsilon"], eps_high, trl["delta"])
    assert (alg.beta, alg.num_iterations) == (trl["beta"], trl["num_iterations"])
    assert alg.scale_rewards == trl["scale_rewards"] and alg.adv_eps == 1e-4 and alg.adv_ddof == 1
    assert trl["multi_objective_aggregation"] == "sum_then_normalize" and alg.advantage == "grpo"
    assert trl["importance_sampling_level"] == "token" and alg.loss == "clip"
    assert trl["loss_type"] == "dapo" and alg.aggregation == "token_mean"
    assert alg.kl_estimator == "k3" and alg.kl_clamp is None  # TRL's k3 is unclamped
    assert alg.kl_bias_correction is trl["use_bias_correction_kl"] is True
    assert alg.mask_truncated == trl["mask_truncated_completions"]
    assert (roll.group_size, roll.temperature, roll.top_p) == (
        trl["num_generations"], trl["temperature"], trl["top_p"])
    assert roll.top_k == (trl["top_k"] or 0)
    assert roll.max_new_tokens == trl["max_completion_length"]
    assert (opt.lr, opt.weight_decay, opt.beta1, opt.beta2, opt.grad_clip) == (
        trl["learning_rate"], trl["weight_decay"], trl["adam_beta1"], trl["adam_beta2"],
        trl["max_grad_norm"])
    assert opt.warmup_steps == trl["warmup_steps"] == 0
    # TRL features r1lab does not have must be off by default for the preset to equal TRL
    assert trl["entropy_coef"] == 0.0 and trl["use_adaptive_entropy"] is False
    assert trl["top_entropy_quantile"] == 1.0 and trl["off_policy_mask_threshold"] is None
    assert trl["sync_ref_model"] is False and trl["use_vllm"] is False  # no vLLM IS correction
