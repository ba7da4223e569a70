"""Checks run before any training: every mistake a config or a tokenizer can hold, found first.

Rows are checked by `load_rows` (file and line in each error); this module checks what a row
cannot tell: the names in the config resolve to registered components (or importable user
functions), and the tokenizer has the special tokens the run needs. Each error is a
ConfigError led by the dotted config key to change:

>>> from r1lab.config import RunConfig
>>> check_config(RunConfig.model_validate({"rewards": {"components": [{"name": "acuracy"}]}}))
Traceback (most recent call last):
...
r1lab.config.ConfigError: rewards.components.0.name: unknown reward 'acuracy'; valid: accuracy, ...
"""

from __future__ import annotations

from typing import Any

from r1lab.config import ConfigError, RunConfig
from r1lab.registry import Registry, UnknownComponentError

R1_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _check_name(registry: Registry, name: str, key: str) -> None:
    try:
        registry.get(name)
    except UnknownComponentError as exc:
        shown = ", ".join(registry.names()[:4]) + (", ..." if len(registry) > 4 else "")
        raise ConfigError(f"{key}: unknown {registry.kind} {name!r}; valid: {shown}") from exc


def check_config(cfg: RunConfig) -> None:
    """Every registered name in `cfg` resolves; a user reward `module:function` imports."""
    import r1lab.rollout.hf  # noqa: F401  (registers the "hf" engine)
    from r1lab.algorithms import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
    from r1lab.data.tasks import TASKS
    from r1lab.data.templates import TEMPLATES
    from r1lab.rewards import REWARDS, load_user_function
    from r1lab.rollout import ENGINES

    alg = cfg.algorithm
    _check_name(TEMPLATES, cfg.data.template, "data.template")
    if cfg.data.source.startswith("synthetic:"):
        _check_name(TASKS, cfg.data.source.split(":", 1)[1], "data.source")
    _check_name(ENGINES, cfg.rollout.engine, "rollout.engine")
    _check_name(ADVANTAGES, alg.advantage, "algorithm.advantage")
    _check_name(POLICY_LOSSES, alg.loss, "algorithm.loss")
    _check_name(AGGREGATIONS, alg.aggregation, "algorithm.aggregation")
    _check_name(KL_ESTIMATORS, alg.kl_estimator, "algorithm.kl_estimator")
    if not cfg.rewards.components:
        raise ConfigError("rewards.components: at least one reward is needed")
    for i, comp in enumerate(cfg.rewards.components):
        key = f"rewards.components.{i}.name"
        if ":" not in comp.name:
            _check_name(REWARDS, comp.name, key)
            continue
        try:
            load_user_function(comp.name)
        except (ImportError, AttributeError, ValueError, TypeError) as exc:
            raise ConfigError(f"{key}: cannot load user reward {comp.name!r} "
                              f"({type(exc).__name__}: {exc})") from None


def check_tokenizer(tokenizer: Any, model: Any, cfg: RunConfig) -> None:
    """The tokenizer can end a completion (eos), has a chat template when `data.template` is
    `chat`, and spells the R1 tags when the format reward or the R1-Zero template needs them."""
    where = f"model.path {cfg.model.path}" if cfg.model.path else "the tiny model's tokenizer"
    gen = getattr(model, "generation_config", None)
    if tokenizer.eos_token_id is None and getattr(gen, "eos_token_id", None) is None:
        raise ConfigError(f"model.path: {where} defines no eos token, so no completion could end")
    if cfg.data.template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"data.template: 'chat' needs a chat template, and {where} has none "
                          "(use data.template: r1_zero)")
    from r1lab.data.templates import resolve

    names = {c.name for c in cfg.rewards.components}
    if "format" in names or resolve(cfg.data.template, tokenizer) == "r1_zero":
        for tag in R1_TAGS:
            ids = tokenizer(tag, add_special_tokens=False)["input_ids"]
            unk = tokenizer.unk_token_id
            if not ids or (unk is not None and unk in ids) or tokenizer.decode(ids).strip() != tag:
                raise ConfigError(
                    f"model.path: {where} cannot spell {tag!r} (it becomes unknown tokens), but "
                    "the format reward and the r1_zero template need the R1 tags")


def check_context(rows: list[dict[str, Any]], tokenizer: Any, model: Any, cfg: RunConfig) -> None:
    """Every prompt plus `rollout.max_new_tokens` fits the model's context
    (`max_position_embeddings`), so no run fails or silently degrades at some later step."""
    from r1lab.data.templates import encode_prompts

    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not limit or not rows:
        return
    lengths = [len(ids) for ids in encode_prompts(rows, tokenizer, cfg.data.template,
                                                  cfg.data.prompt_field)]
    i = max(range(len(lengths)), key=lengths.__getitem__)
    need = lengths[i] + cfg.rollout.max_new_tokens
    if need > limit:
        text = str(rows[i].get("prompt", rows[i].get(cfg.data.prompt_field)))
        raise ConfigError(
            f"rollout.max_new_tokens: the longest prompt (row {i}: {text[:60]!r}{'...' if len(text) > 60 else ''}) "
            f"has {lengths[i]} tokens, so with max_new_tokens={cfg.rollout.max_new_tokens} a "
            f"sequence reaches {need} positions, past the model's context of {limit} "
            "(max_position_embeddings); lower rollout.max_new_tokens or drop the longest prompts")


def check_reward_rows(rows: list[dict[str, Any]], cfg: RunConfig) -> None:
    """Each reward that can check rows (`fn.check_rows`, e.g. the code reward's tests key) does,
    before the run: a field every row lacks is an error, not a run of zero rewards."""
    from r1lab.rewards import get_reward

    for i, comp in enumerate(cfg.rewards.components):
        check = getattr(get_reward(comp.name), "check_rows", None)
        if check is None or not rows:
            continue
        try:
            check(rows, **(comp.kwargs or {}))
        except ValueError as exc:
            raise ConfigError(f"rewards.components.{i}.kwargs: {exc}") from None
