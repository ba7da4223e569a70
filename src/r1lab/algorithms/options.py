"""From ``algorithm.*`` config to the four functions a step calls, with their options checked.

``resolve_algorithm(cfg.algorithm)`` looks up the registered advantage estimator, policy loss,
aggregation and KL estimator and binds each to the config options it takes::

    alg = resolve_algorithm(cfg.algorithm)
    adv = alg.advantage(rewards=r, component_rewards=rc, component_weights=w, group_size=G,
                        mask=mask, values=None)                           # [N, T]
    per_token, metrics = alg.loss(logp=logp, old_logp=old, advantages=adv, mask=m)
    if alg.kl is not None:                                                # beta > 0
        per_token = per_token + beta * alg.kl(logp=logp, ref_logp=ref, old_logp=old, mask=m)
    loss = alg.aggregation(per_token=per_token, mask=m, num_tokens=nt, num_seqs=ns, norm_len=L)

A ``Chosen`` passes its function the inputs the function's signature names (the trainer offers
every input of the kind; the ones a function does not name are dropped) plus all of its bound
options. Options are strict: a key in ``OPTIONS`` that the user *set* (pydantic's
``model_fields_set``) to a value other than its default, and that the chosen function does not
take, is an ``OptionError`` naming the key; an option left at its default (or written out at its
default, as a saved ``config.yaml`` writes every field) is passed only to the functions that take
it. A function that needs an input its kind does not offer (and no option gives) is refused too.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from r1lab.algorithms.advantages import ADVANTAGES
from r1lab.algorithms.aggregation import AGGREGATIONS
from r1lab.algorithms.kl import KL_ESTIMATORS
from r1lab.algorithms.losses import POLICY_LOSSES
from r1lab.registry import Registry

if TYPE_CHECKING:
    from r1lab.config import AlgorithmConfig, CriticConfig

#: the four kinds, their registries and the config key that names the chosen function
KINDS: dict[str, tuple[Registry, str]] = {
    "advantage": (ADVANTAGES, "advantage"),
    "loss": (POLICY_LOSSES, "loss"),
    "aggregation": (AGGREGATIONS, "aggregation"),
    "kl": (KL_ESTIMATORS, "kl_estimator"),
}

#: the inputs the trainer offers each kind (the contract between the step and these functions)
INPUTS: dict[str, frozenset[str]] = {
    "advantage": frozenset(
        {"rewards", "component_rewards", "component_weights", "group_size", "mask", "values"}),
    "loss": frozenset({"logp", "old_logp", "advantages", "mask"}),
    "kl": frozenset({"logp", "ref_logp", "old_logp", "mask"}),
    "aggregation": frozenset({"per_token", "mask", "num_tokens", "num_seqs", "norm_len"}),
}

#: ``algorithm.<key>`` -> (kind, parameter name of the chosen function)
OPTIONS: dict[str, tuple[str, str]] = {
    "adv_eps": ("advantage", "eps"),
    "adv_ddof": ("advantage", "ddof"),
    "scale_rewards": ("advantage", "scale"),
    "eps_low": ("loss", "eps_low"),
    "eps_high": ("loss", "eps_high"),
    "dual_clip_c": ("loss", "dual_clip_c"),
    "clip_delta": ("loss", "delta"),
    "kl_clamp": ("kl", "clamp"),
    "kl_bias_correction": ("kl", "bias_correction"),
}

#: ``critic.<key>`` -> advantage parameter: passed when the estimator takes it, never an error
#: (the critic's GAE constants also set the value targets)
CRITIC_OPTIONS: dict[str, str] = {"gamma": "gamma", "lam": "lam", "whiten": "whiten"}


class OptionError(ValueError):
    """An ``algorithm.*`` setting the chosen function cannot use; ``key`` is the config key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@cache
def _params(fn: Callable) -> tuple[frozenset[str], frozenset[str], bool]:
    """(all parameter names, the required ones, whether it takes ``**kwargs``)."""
    params = inspect.signature(fn).parameters.values()
    names = frozenset(p.name for p in params
                      if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    required = frozenset(p.name for p in params if p.default is p.empty
                         and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    return names, required, any(p.kind is p.VAR_KEYWORD for p in params)


@dataclass(frozen=True)
class Chosen:
    """One registered function with its validated config options.

    >>> def scale(x, *, by=2.0):
    ...     return x * by
    >>> Chosen("loss", "scale", scale, {"by": 3.0})(x=2.0, unused="dropped")
    6.0
    """

    kind: str  # "advantage" | "loss" | "aggregation" | "kl"
    name: str
    fn: Callable
    options: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, **inputs: Any) -> Any:
        names, _, var_kw = _params(self.fn)
        if not var_kw:
            inputs = {k: v for k, v in inputs.items() if k in names}
        return self.fn(**inputs, **self.options)

    def takes(self) -> list[str]:
        """The option names (parameters beyond the kind's inputs) this function accepts."""
        names, _, _ = _params(self.fn)
        return sorted(names - INPUTS[self.kind])


@dataclass(frozen=True)
class Algorithm:
    """The four functions of a step; ``kl`` is None when ``beta == 0`` (no reference model)."""

    advantage: Chosen
    loss: Chosen
    aggregation: Chosen
    kl: Chosen | None


def _described(kind: str, name: str) -> str:
    return {"advantage": "advantage estimator", "loss": "loss", "aggregation": "aggregation",
            "kl": "KL estimator"}[kind] + f" {name!r}"


def choose(kind: str, name: str, settings: Mapping[str, tuple[Any, bool]],
           extra: Mapping[str, Any] | None = None) -> Chosen:
    """Bind ``kind``'s function ``name`` to the options of ``settings`` it takes.

    ``settings`` maps a config key to ``(value, set_by_user)``; only keys of ``OPTIONS`` for
    this kind are looked at. ``extra`` are parameter values passed when the function takes them.

    >>> dict(choose("loss", "pg", {"eps_low": (0.2, False)}).options)  # a default: dropped
    {}
    >>> choose("loss", "pg", {"eps_low": (0.2, True)})
    Traceback (most recent call last):
    ...
    r1lab.algorithms.options.OptionError: eps_low: the loss 'pg' does not take this option (it takes: none)
    """
    registry, name_key = KINDS[kind]
    fn = registry.get(name)
    names, required, var_kw = _params(fn)
    taken = sorted(names - INPUTS[kind])
    options: dict[str, Any] = {}
    for key, (kind_of, param) in OPTIONS.items():
        if kind_of != kind or key not in settings:
            continue
        value, was_set = settings[key]
        if param in names or var_kw:
            options[param] = value
        elif was_set:
            raise OptionError(key, f"the {_described(kind, name)} does not take this option "
                                   f"(it takes: {', '.join(taken) or 'none'})")
    for param, value in (extra or {}).items():
        if param in names or var_kw:
            options[param] = value
    missing = sorted(required - INPUTS[kind] - set(options))
    if missing:
        raise OptionError(name_key, f"the {_described(kind, name)} needs {', '.join(missing)}, "
                                    f"which no input of a {kind} function and no option gives")
    return Chosen(kind, name, fn, MappingProxyType(options))  # read-only: the run's settings


def option_keys(kind: str, name: str) -> list[str]:
    """The ``algorithm.*`` (and ``critic.*``) config keys that ``kind``'s function ``name`` takes.

    >>> option_keys("loss", "gspo"), option_keys("kl", "k1")
    (['eps_low', 'eps_high'], [])
    """
    names, _, var_kw = _params(KINDS[kind][0].get(name))
    keys = [key for key, (k, param) in OPTIONS.items() if k == kind and (param in names or var_kw)]
    if kind == "advantage":
        keys += [f"critic.{key}" for key, param in CRITIC_OPTIONS.items() if param in names]
    return keys


def _set(alg: AlgorithmConfig, key: str) -> bool:
    """Whether the user set ``key`` to something other than its default. A value equal to the
    default counts as unset, so that a saved ``config.yaml`` (which writes every field) loads
    again, and a pipeline stage re-validating the dumped config does not trip on defaults."""
    return key in alg.model_fields_set and getattr(alg, key) != type(alg).model_fields[key].default


def resolve_algorithm(alg: AlgorithmConfig, critic: CriticConfig | None = None) -> Algorithm:
    """The step's four functions from ``cfg.algorithm`` (and ``cfg.critic``'s GAE constants).

    Raises ``UnknownComponentError`` for an unregistered name and ``OptionError`` (naming the
    ``algorithm.*`` key) for an option the chosen function does not take. The KL estimator's
    options are checked even when ``beta == 0``, where ``kl`` is None.
    """
    settings = {key: (getattr(alg, key), _set(alg, key)) for key in OPTIONS}
    extra = {} if critic is None else {p: getattr(critic, k) for k, p in CRITIC_OPTIONS.items()}
    kl = choose("kl", alg.kl_estimator, settings)
    return Algorithm(
        advantage=choose("advantage", alg.advantage, settings, extra),
        loss=choose("loss", alg.loss, settings),
        aggregation=choose("aggregation", alg.aggregation, settings),
        kl=kl if alg.beta > 0 else None,
    )
