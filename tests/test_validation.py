"""Bad input is refused before any work, with an error naming the file:line or the config key.

Property-based: whatever a dataset row or a config holds, loading it either succeeds or raises
the one documented error type (DataError / ConfigError) with a located message; never another
exception, never a traceback at the command line.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from typer.testing import CliRunner

from r1lab.cli import app
from r1lab.config import ConfigError, RunConfig, load_config
from r1lab.data.loading import DataError, load_rows
from r1lab.data.validate import check_config, check_tokenizer
from r1lab.models.tiny import build_char_tokenizer

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)
rows = st.one_of(
    st.fixed_dictionaries({}, optional={"question": values, "answer": values, "extra": values}),
    values,
)
lines = st.one_of(
    rows.map(lambda r: json.dumps(r).encode()),
    st.binary(max_size=20).filter(lambda b: b"\n" not in b),
)


# ---------------------------------------------------------------- dataset rows
@FAST
@given(st.lists(lines, min_size=0, max_size=6))
def test_any_jsonl_loads_or_names_file_and_line(content):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "train.jsonl"
        path.write_bytes(b"\n".join(content))
        try:
            loaded = load_rows(path)
        except DataError as exc:
            msg = str(exc)
            assert msg.startswith(str(path)), msg
            assert re.match(rf"{re.escape(str(path))}(:\d+: |: no rows$)", msg), msg
            return
        for row in loaded:  # what loads is usable: non-empty strings in the needed fields
            assert all(isinstance(row[f], str) and row[f].strip() for f in ("question", "answer"))


@FAST
@given(st.lists(rows, max_size=4))
def test_any_json_list_loads_or_names_the_row(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "train.json"
        path.write_text(json.dumps(data))
        try:
            load_rows(path)
        except DataError as exc:
            assert re.match(rf"{re.escape(str(path))}( row \d+: |: no rows$)", str(exc)), str(exc)


@pytest.mark.parametrize(("line", "message"), [
    ('{"answer": "4"}', r"train\.jsonl:2: missing field 'question'"),
    ('{"question": "  ", "answer": "4"}', r"train\.jsonl:2: field 'question' is empty"),
    ('{"question": ["2+2"], "answer": "4"}', r"train\.jsonl:2: field 'question' must be a string, got list"),
    ('{"question": "2+2", "answer": NaN}', r"train\.jsonl:2: field 'answer' is nan"),
    ('[1, 2]', r"train\.jsonl:2: expected a JSON object, got list"),
    ('{"question": "2+2", ', r"train\.jsonl:2: not valid JSON"),
])
def test_bad_rows_are_named(tmp_path, line, message):
    path = tmp_path / "train.jsonl"
    path.write_text('{"question": "1+1", "answer": "2"}\n' + line + "\n")
    with pytest.raises(DataError, match=message):
        load_rows(path)


def test_invalid_utf8_is_named(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"question": "1+1", "answer": "2"}\n{"question": "\xff", "answer": "2"}\n')
    with pytest.raises(DataError, match=r"train\.jsonl:2: not valid UTF-8"):
        load_rows(path)


# ---------------------------------------------------------------- configs
SECTIONS = list(RunConfig.model_fields)
keys = st.one_of(st.sampled_from(["steps", "lr", "group_size", "name", "template", "tiny",
                                  "components", "source", "beta", "keep_last"]), st.text(max_size=6))
configs = st.dictionaries(
    st.one_of(st.sampled_from(SECTIONS), st.text(max_size=6)),
    st.one_of(values, st.dictionaries(keys, values, max_size=4)), max_size=4)
KEYED = re.compile(r"^\S.*?: \S")  # a dotted key (quoted when odd), then what is wrong


@FAST
@given(configs)
def test_any_config_validates_or_names_the_key(raw):
    try:
        cfg = RunConfig.model_validate(raw)
        check_config(cfg)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            assert KEYED.match(line), line


@FAST
@given(st.lists(st.text(max_size=20), max_size=3))
def test_any_override_applies_or_names_the_problem(overrides):
    try:
        load_config(None, overrides)
    except ConfigError as exc:
        assert str(exc)


@FAST
@given(st.text(max_size=60))
def test_any_yaml_file_loads_or_names_the_file(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cfg.yaml"
        path.write_text(text)
        try:
            load_config(path)
        except ConfigError as exc:
            assert str(exc)


@pytest.mark.parametrize(("section", "message"), [
    ({"rewards": {"components": [{"name": "format"}, {"name": "acuracy"}]}},
     r"^rewards\.components\.1\.name: unknown reward 'acuracy'; valid: "),
    ({"rewards": {"components": [{"name": "no_such_module:score"}]}},
     r"^rewards\.components\.0\.name: cannot load user reward 'no_such_module:score'"),
    ({"algorithm": {"loss": "clipp"}}, r"^algorithm\.loss: unknown policy_loss 'clipp'"),
    ({"data": {"template": "r2"}}, r"^data\.template: unknown template 'r2'"),
    ({"data": {"source": "synthetic:calculus"}}, r"^data\.source: unknown task 'calculus'"),
])
def test_unknown_names_are_refused_with_their_key(section, message):
    with pytest.raises(ConfigError, match=message):
        check_config(RunConfig.model_validate(section))


# ---------------------------------------------------------------- tokenizers
def digits_only_tokenizer(eos: bool = True) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<unk>", *"0123456789+QA:\n"])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                   eos_token="<eos>" if eos else None)


NO_GEN = SimpleNamespace(generation_config=None)


def test_tokenizer_checks():
    check_tokenizer(build_char_tokenizer(), NO_GEN, RunConfig())  # the demo's passes
    with pytest.raises(ConfigError, match=r"cannot spell '<think>'"):
        check_tokenizer(digits_only_tokenizer(), NO_GEN, RunConfig())
    with pytest.raises(ConfigError, match=r"^model\.path: .* no eos token"):
        check_tokenizer(digits_only_tokenizer(eos=False), NO_GEN, RunConfig())
    with pytest.raises(ConfigError, match=r"^data\.template: 'chat' needs a chat template"):
        check_tokenizer(build_char_tokenizer(), NO_GEN,
                        RunConfig.model_validate({"data": {"template": "chat"}}))


# ---------------------------------------------------------------- nothing started
runner = CliRunner()
TINY = {"model": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 2,
                           "intermediate_size": 32}}}


def _cli(tmp_path, raw, *extra):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "grpo", str(config), "--out", str(out), *extra])
    return result, out, "".join(result.output.split())  # the console wraps long lines


def test_cli_refuses_a_bad_row_naming_file_and_line_with_nothing_started(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "1+1", "answer": "2"}\n{"question": "", "answer": "2"}\n')
    result, out, text = _cli(tmp_path, {**TINY, "data": {"source": str(data)}})
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "train.jsonl:2:field'question'isempty" in text
    assert "Traceback" not in result.output and not out.exists()


def test_cli_refuses_an_unknown_reward_naming_the_key_with_nothing_started(tmp_path):
    result, out, text = _cli(tmp_path, {**TINY, "rewards": {"components": [{"name": "acuracy"}]}})
    assert result.exit_code == 2
    assert "rewards.components.0.name:unknownreward'acuracy'" in text
    assert not out.exists()


def test_cli_refuses_a_tokenizer_without_the_r1_tags_with_nothing_started(tmp_path, monkeypatch,
                                                                          micro_model):
    import r1lab.pipeline.run as run

    monkeypatch.setattr(run, "load_policy", lambda cfg, seed: (micro_model, digits_only_tokenizer()))
    result, out, text = _cli(tmp_path, {**TINY, "data": {"template": "r1_zero"}})
    assert result.exit_code == 2 and "cannotspell'<think>'" in text
    assert not out.exists()


def test_cli_refuses_a_broken_explicit_resume_path(tmp_path):
    result, out, text = _cli(tmp_path, TINY, "--resume", str(tmp_path / "nowhere"))
    assert result.exit_code == 2 and "nosuchcheckpoint" in text
    assert not out.exists()


def test_a_prompt_that_cannot_fit_the_context_is_refused_before_the_run(micro_model, tokenizer):
    from r1lab.data.validate import check_context

    cfg = RunConfig.model_validate({"data": {"template": "tiny"}, "rollout": {"max_new_tokens": 100}})
    short = [{"question": "1+1"}, {"question": "2+3"}]
    long = short + [{"question": "9" * 40}]  # "Q:" + 40 digits + "\nA:" = 45 characters
    limit = micro_model.config.max_position_embeddings  # 128
    check_context(short, tokenizer, micro_model, cfg)  # 8 + 100 <= 128
    with pytest.raises(ConfigError) as err:
        check_context(long, tokenizer, micro_model, cfg)
    msg = str(err.value)
    assert msg.startswith("rollout.max_new_tokens:") and "row 2" in msg
    n = len(tokenizer("Q:" + "9" * 40 + "\nA:")["input_ids"])
    assert f"has {n} tokens" in msg and f"reaches {n + 100} positions" in msg and f"{limit}" in msg
    cfg.rollout.max_new_tokens = limit - n  # exactly at the limit: accepted
    check_context(long, tokenizer, micro_model, cfg)
