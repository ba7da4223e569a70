"""The ops backend: typed config in, concrete values written back, a record out; no timing race."""

from __future__ import annotations

import pytest
import torch

import r1lab.kernels as kernels
import r1lab.onednn as onednn
import r1lab.runtime as runtime
from r1lab.config import ConfigError, RunConfig
from r1lab.models import backend
from r1lab.models.loading import load_policy

ZEN5 = "vendor_id\t: AuthenticAMD\ncpu family\t: 26\nflags\t\t: fpu sse avx2 avx512f avx512bw\n"
ZEN4 = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nflags\t\t: fpu sse avx2 avx512f avx512bw\n"
INTEL = "vendor_id\t: GenuineIntel\ncpu family\t: 6\nflags\t\t: fpu sse avx2 avx512f\n"


@pytest.fixture(autouse=True)
def _restore(monkeypatch):
    """Each test may switch the process-wide backend; put every part back afterwards."""
    for var in backend.ENV.values():
        monkeypatch.delenv(var, raising=False)
    saved = (kernels._lib, kernels._why, kernels._loaded, kernels._deterministic,
             onednn._usable, onednn._wgrad, runtime._allowed)
    yield
    (kernels._lib, kernels._why, kernels._loaded, kernels._deterministic,
     onednn._usable, onednn._wgrad, runtime._allowed) = saved


def _no_timing(*_a, **_k):
    raise AssertionError("the weight-gradient path was timed without backend.onednn_wgrad: tune")


def test_the_rule_picks_by_cpu_not_by_timing():
    assert onednn.weight_grad_rule(ZEN5)[0] == "onednn"  # MKL: AVX2 path on AMD; oneDNN AVX-512
    assert onednn.weight_grad_rule(ZEN4)[0] == "mkl"
    assert onednn.weight_grad_rule(INTEL)[0] == "mkl"
    assert onednn.weight_grad_rule(ZEN5.replace(" avx512f", ""))[0] == "mkl"
    assert onednn.weight_grad_rule("")[0] == "mkl"  # no /proc/cpuinfo


def test_auto_resolves_to_concrete_values_written_into_the_config(monkeypatch):
    monkeypatch.setattr(onednn, "tune_weight_grad", _no_timing)
    monkeypatch.setattr(onednn, "cpuinfo_text", lambda: ZEN5)
    cfg = RunConfig.model_validate({"model": {"device": "cpu"}})
    rec = backend.resolve(cfg)
    want_k = "on" if kernels.available() else "off"
    want_d = "on" if onednn.onednn_usable() else "off"
    assert (cfg.backend.kernels, cfg.backend.onednn) == (want_k, want_d)
    assert cfg.backend.onednn_wgrad == ("onednn" if want_d == "on" else "mkl")
    assert onednn.weight_grad_by_onednn() is (want_d == "on")  # applied process-wide
    assert rec == {"kernels": want_k, "onednn": want_d, "onednn_wgrad": cfg.backend.onednn_wgrad,
                   "malloc_tuning": cfg.backend.malloc_tuning, "deterministic": False,
                   "chosen_by": cfg.backend.chosen_by}
    assert rec["chosen_by"]["onednn_wgrad"].startswith("config: auto -> ")
    assert "AuthenticAMD family 26" in rec["chosen_by"]["onednn_wgrad"]
    # config.yaml shows what ran, and loads back as a valid config that asks for exactly that
    again = RunConfig.model_validate(__import__("yaml").safe_load(cfg.to_yaml()))
    assert again.backend == cfg.backend and again.backend.kernels in ("on", "off")
    assert backend.last() == rec


def test_an_intel_cpu_keeps_the_weight_gradient_on_mkl(monkeypatch):
    monkeypatch.setattr(onednn, "tune_weight_grad", _no_timing)
    monkeypatch.setattr(onednn, "cpuinfo_text", lambda: INTEL)
    cfg = RunConfig()
    assert backend.resolve(cfg)["onednn_wgrad"] == "mkl" and not onednn.weight_grad_by_onednn()


def test_tune_is_explicit_and_recorded_and_deterministic_replaces_it(monkeypatch):
    calls = []
    monkeypatch.setattr(onednn, "tune_weight_grad",
                        lambda: calls.append(1) or ("onednn", {"mkl_ms": 9.5, "onednn_ms": 6.25}))
    monkeypatch.setattr(onednn, "cpuinfo_text", lambda: INTEL)
    cfg = RunConfig.model_validate({"backend": {"onednn_wgrad": "tune", "onednn": "auto"}})
    rec = backend.resolve(cfg)
    assert calls == [1]
    if onednn.onednn_usable():
        assert rec["onednn_wgrad"] == "onednn" == cfg.backend.onednn_wgrad
    assert "tune -> onednn (best of 4: mkl_ms 9.5, onednn_ms 6.25)" in rec["chosen_by"]["onednn_wgrad"]
    det = RunConfig.model_validate({"backend": {"onednn_wgrad": "tune"}, "train": {"deterministic": True}})
    rec = backend.resolve(det)
    assert calls == [1]  # not timed again: the fixed rule (Intel -> MKL) instead
    assert rec["onednn_wgrad"] == "mkl" and rec["deterministic"] is True and kernels._deterministic
    assert "replaced by the fixed rule (train.deterministic)" in rec["chosen_by"]["onednn_wgrad"]


def test_environment_overrides_win_and_are_recorded(monkeypatch):
    monkeypatch.setenv("R1LAB_KERNELS", "0")
    monkeypatch.setenv("R1LAB_ONEDNN_WGRAD", "0")
    cfg = RunConfig.model_validate({"backend": {"kernels": "on", "onednn_wgrad": "onednn"}})
    rec = backend.resolve(cfg)
    assert cfg.backend.kernels == "off" and not kernels.available()
    assert rec["chosen_by"]["kernels"] == "env R1LAB_KERNELS=0: off"
    assert rec["onednn_wgrad"] == "mkl" and rec["chosen_by"]["onednn_wgrad"] == "env R1LAB_ONEDNN_WGRAD=0: mkl"
    monkeypatch.setenv("R1LAB_KERNELS", "maybe")
    with pytest.raises(ConfigError, match="R1LAB_KERNELS='maybe' \\(overrides backend.kernels\\)"):
        backend.resolve(RunConfig())


def test_off_turns_each_part_off_and_on_brings_it_back():
    cfg = RunConfig.model_validate({"backend": {"kernels": "off", "onednn": "off", "onednn_wgrad": "onednn"}})
    rec = backend.resolve(cfg)
    assert not kernels.available() and kernels.why_unavailable() == "backend.kernels: off"
    assert not onednn.onednn_usable() and not onednn.weight_grad_by_onednn()
    assert rec["onednn_wgrad"] == "mkl" and rec["chosen_by"]["onednn_wgrad"].endswith("oneDNN is off, so mkl")
    x = torch.randn(3, 8)
    assert onednn.Linear(torch.randn(1 << 9, 1 << 9)).packed is None  # large, yet not packed
    if kernels.set_enabled(True):  # where the kernels build here, they come back
        assert kernels.supports(x)


def test_on_that_cannot_be_honoured_is_an_error_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-r1lab")
    monkeypatch.setenv("R1LAB_KERNEL_CACHE", str(tmp_path))
    kernels.set_enabled(False)
    with pytest.raises(ConfigError, match="backend.kernels: on \\(config\\), but the C kernels are "
                                          "unavailable here: .*no-such-compiler-r1lab"):
        backend.resolve(RunConfig.model_validate({"backend": {"kernels": "on"}}))


def test_load_policy_resolves_the_backend_of_a_run_config(monkeypatch):
    monkeypatch.setattr(onednn, "tune_weight_grad", _no_timing)
    cfg = RunConfig.model_validate({"model": {"device": "cpu", "tiny": {
        "hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 32}}, "backend": {"onednn": "off"}})
    model, _ = load_policy(cfg)
    assert cfg.backend.onednn == "off" and cfg.backend.onednn_wgrad == "mkl" and cfg.backend.chosen_by
    assert sum(p.numel() for p in model.parameters()) > 0


def test_deterministic_rms_norm_weight_gradient_by_hand():
    """x = [[3, 4], [0, 2]], w = [1, 2], eps = 0: rstd = [1/sqrt(12.5), 1/sqrt(2)];
    dy = [[1, 0], [0, 1]]: dw = sum over rows of dy * x * rstd = [3/sqrt(12.5), 2/sqrt(2)]."""
    if not kernels.available():
        pytest.skip(f"no C kernels here: {kernels.why_unavailable()}")
    want = torch.tensor([3 / 12.5 ** 0.5, 2 / 2 ** 0.5])
    for det in (False, True):
        kernels.set_deterministic(det)
        x = torch.tensor([[3.0, 4.0], [0.0, 2.0]], requires_grad=True)
        w = torch.tensor([1.0, 2.0], requires_grad=True)
        kernels.rms_norm(x, w, 0.0).backward(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        torch.testing.assert_close(w.grad, want, rtol=1e-6, atol=1e-6)
        ref_x = torch.tensor([[3.0, 4.0], [0.0, 2.0]], requires_grad=True)
        kernels.reference_rms_norm(ref_x, w.detach(), 0.0).backward(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-5, atol=1e-6)


def test_a_run_writes_the_resolved_backend_into_its_config_yaml(tmp_path, monkeypatch):
    """`run_grpo` loads the model through `load_policy(cfg)`: the run's config.yaml holds the
    concrete choices and how each was made, not `auto`."""
    import yaml

    from r1lab.pipeline.run import run_grpo

    monkeypatch.setattr(onednn, "tune_weight_grad", _no_timing)
    monkeypatch.setenv("R1LAB_MALLOC_TUNING", "0")
    tiny = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 2,
            "intermediate_size": 32, "max_position_embeddings": 64}
    cfg = RunConfig.model_validate({
        "model": {"tiny": tiny, "device": "cpu", "threads": 1},
        "data": {"train_size": 4, "heldout_size": 2},
        "rollout": {"group_size": 2, "max_new_tokens": 4},
        "train": {"steps": 1, "batch_size": 2, "micro_batch_size": 4},
        "eval": {"num_problems": 1, "k": 1, "temperatures": [1.0], "greedy": False},
        "log": {"progress": False, "samples_per_step": 0},
        "backend": {"onednn": "off", "onednn_wgrad": "tune"}})
    run_grpo(cfg, tmp_path / "run")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["backend"]
    assert saved["onednn"] == "off" and saved["kernels"] in ("on", "off")
    # tune asked for, but oneDNN is off: the tuner is not run (it would raise) and MKL is used
    assert saved["onednn_wgrad"] == "mkl"
    assert saved["chosen_by"]["onednn_wgrad"] == "config: tune -> mkl (oneDNN is off: nothing to time)"
    # the env override wins; an earlier test in this process may have tuned already (for good)
    assert saved["malloc_tuning"] == ("on" if runtime._tuned else "off")
    assert saved["chosen_by"]["malloc_tuning"].startswith("env R1LAB_MALLOC_TUNING=0: off")
    assert saved["chosen_by"]["malloc_tuning"].endswith("cannot be undone)") is bool(runtime._tuned)
    assert saved["chosen_by"]["onednn"] == "config: off"
