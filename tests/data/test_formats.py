"""Dataset formats end to end: each published row shape becomes a canonical row (prompt, answer,
tests), misfits name file:line, and the rewards' needs are checked before a run."""

import json

import pytest

from r1lab.config import RunConfig
from r1lab.data.formats import detect, to_canonical
from r1lab.data.loading import DataError, load_dataset
from r1lab.data.prompts import load_prompt_rows


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(**data):
    return RunConfig.model_validate({"data": data})


def test_gsm8k_gold_is_the_number_after_hashes_and_the_raw_answer_is_kept():
    row = {"question": "Tom has 3 bags of 24. How many?", "answer": "3 * 24 = <<3*24=72>>72\n#### 72"}
    out = to_canonical(row, detect(row))
    assert out["prompt"] == row["question"] and out["answer"] == "72"
    assert out["raw_answer"] == row["answer"] and out["question"] == row["question"]


def test_math_gold_is_the_last_box_of_the_solution():
    row = {"problem": "What is 2+3?", "solution": r"First $\boxed{4}$? No: $2+3=\boxed{5}$."}
    out = to_canonical(row, detect(row))
    assert (detect(row), out["prompt"], out["answer"]) == ("math", "What is 2+3?", "5")
    # MATH-500 has an `answer` column: it wins over the solution
    assert to_canonical(row | {"answer": "5"}, "math")["answer"] == "5"


def test_aime_answers_must_be_integers():
    assert to_canonical({"problem": "p", "answer": "033"}, "aime")["answer"] == "33"
    with pytest.raises(ValueError, match="not an integer"):
        to_canonical({"problem": "p", "answer": "1/2"}, "aime")


def test_gpqa_options_are_shuffled_by_seed_and_the_gold_is_the_letter():
    row = {"Question": "Which is a noble gas?", "Correct Answer": "Neon",
           "Incorrect Answer 1": "Iron", "Incorrect Answer 2": "Carbon", "Incorrect Answer 3": "Zinc"}
    a, b = to_canonical(row, "gpqa", seed=1, index=0), to_canonical(row, "gpqa", seed=1, index=0)
    assert a == b  # seeded
    letter = a["answer"]
    assert f"{letter}) Neon" in a["prompt"] and a["choices"]["ABCD".index(letter)] == "Neon"
    letters = {to_canonical(row, "gpqa", seed=s, index=0)["answer"] for s in range(20)}
    assert len(letters) > 1  # the correct option is not always in the same place


def test_code_formats_give_the_fields_the_code_reward_reads():
    he = {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n", "entry_point": "add",
          "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}
    out = to_canonical(he, detect(he))
    assert (out["tests"], out["entry_point"], out["code_prefix"], out["code_format"]) == (
        he["test"], "add", he["prompt"], "humaneval")
    mbpp = {"text": "Write add.", "test_list": ["assert add(1, 2) == 3"]}
    out = to_canonical(mbpp, detect(mbpp))
    assert out["tests"] == ["assert add(1, 2) == 3"] and out["code_format"] == "mbpp"
    assert out["prompt"].endswith("assert add(1, 2) == 3")
    apps = {"question": "Echo.", "input_output": json.dumps({"inputs": ["1\n"], "outputs": ["1\n"]})}
    cc = {"description": "Echo.", "public_tests": {"input": ["2\n"], "output": ["2\n"]}}
    lcb = {"question_content": "Echo.", "public_test_cases": json.dumps([{"input": "3", "output": "3"}])}
    assert [to_canonical(r, detect(r))["tests"] for r in (apps, cc, lcb)] == [
        [{"input": "1\n", "output": "1\n"}], [{"input": "2\n", "output": "2\n"}],
        [{"input": "3", "output": "3"}]]


def test_messages_rows_prompt_with_the_last_user_message():
    row = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1?"}],
           "answer": "2"}
    out = to_canonical(row, detect(row))
    assert (out["prompt"], out["answer"]) == ("1+1?", "2")


def test_a_row_that_does_not_fit_names_file_and_line(tmp_path):
    f = _jsonl(tmp_path / "gsm.jsonl", [{"question": "q", "answer": "x\n#### 1"}, {"question": "q", "answer": "no hashes"}])
    with pytest.raises(DataError, match=r"gsm\.jsonl:2: gsm8k row: GSM8K answer has no '#### <number>'"):
        load_dataset(f)
    with pytest.raises(DataError, match="data.format: unknown format 'gsm9k'"):
        load_dataset(f, "gsm9k")


def test_parquet_and_datasets_dir_with_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"problem": "1+1?", "solution": r"\boxed{2}"}, {"problem": "2+2?", "solution": r"\boxed{4}"}]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "m.parquet"))
    assert [r["answer"] for r in load_dataset(tmp_path / "m.parquet").rows] == ["2", "4"]
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "dir"))
    assert [r["answer"] for r in load_dataset(f"{tmp_path / 'dir'}@test").rows] == ["4"]
    with pytest.raises(DataError, match="no split 'dev'"):
        load_dataset(f"{tmp_path / 'dir'}@dev")


def test_load_prompt_rows_math_file_with_configured_fields(tmp_path, capfd):
    f = _jsonl(tmp_path / "m.jsonl", [{"problem": f"{i}+1?", "solution": f"so \\boxed{{{i + 1}}}"} for i in range(10)])
    train, held = load_prompt_rows(_cfg(source=str(f), prompt_field="problem", answer_field="solution"))
    assert [(r["prompt"], r["answer"]) for r in train[:2]] == [("0+1?", "1"), ("1+1?", "2")] and held == []
    assert "format math (detected" in capfd.readouterr().err
    train, held = load_prompt_rows(_cfg(source=str(f), eval_fraction=0.3, seed=3))
    assert len(train) == 7 and len(held) == 3
    assert {r["prompt"] for r in train}.isdisjoint(r["prompt"] for r in held)
    again = load_prompt_rows(_cfg(source=str(f), eval_fraction=0.3, seed=3))[1]
    assert again == held  # seeded
    ev = _jsonl(tmp_path / "ev.jsonl", [{"question": "q", "answer": "a\n#### 7"}])
    train, held = load_prompt_rows(_cfg(source=str(f), eval_source=str(ev)))
    assert len(train) == 10 and [r["answer"] for r in held] == ["7"]


def test_synthetic_rows_get_a_prompt():
    train, held = load_prompt_rows(_cfg(train_size=3, heldout_size=2))
    assert all(r["prompt"] == r["question"] and r["answer"] for r in train + held)


def test_a_reward_without_its_field_fails_before_the_run(tmp_path):
    f = _jsonl(tmp_path / "q.jsonl", [{"question": "1+1", "answer": "2"}, {"question": "2+2"}])
    with pytest.raises(DataError, match=r"rewards.components.0.name: accuracy needs 'answer' in every "
                                        r"row, but .*q\.jsonl:2 has none"):
        load_prompt_rows(_cfg(source=str(f)))
    cfg = RunConfig.model_validate({"data": {"source": str(f)}, "rewards": {"components": [{"name": "format"}]}})
    assert len(load_prompt_rows(cfg)[0]) == 2  # the format reward needs no gold
    cfg = RunConfig.model_validate({"data": {"source": str(f)}, "rewards": {"components": [{"name": "code"}]}})
    with pytest.raises(DataError, match="code needs 'tests'"):
        load_prompt_rows(cfg)


def test_mixed_math_and_code_rows_need_one_reward_field_each(tmp_path):
    f = _jsonl(tmp_path / "mix.jsonl", [{"question": "1+1", "answer": "2"},
                                        {"question": "Write f.", "tests": ["assert f() == 1"]},
                                        {"question": "neither"}])
    rewards = {"components": [{"name": "accuracy"}, {"name": "code"}]}
    cfg = RunConfig.model_validate({"data": {"source": str(f)}, "rewards": rewards})
    with pytest.raises(DataError, match=r"accuracy needs 'answer' in every row, but .*mix\.jsonl:3"):
        load_prompt_rows(cfg)
    _jsonl(f, [{"question": "1+1", "answer": "2"}, {"question": "Write f.", "tests": ["assert f() == 1"]}])
    assert len(load_prompt_rows(cfg)[0]) == 2
    from r1lab.rewards.math import accuracy

    s = accuracy("<answer>2</answer>", {"question": "Write f.", "tests": ["assert f() == 1"]})
    assert s.value == 0.0 and s.metrics["no_gold"] is True


def test_file_only_keys_are_refused_for_a_synthetic_task():
    from r1lab.config import ConfigError

    for data in ({"eval_fraction": 0.1}, {"eval_source": "x.jsonl"}, {"format": "gsm8k"}):
        with pytest.raises(ConfigError, match=f"data.{next(iter(data))}: .* applies to file data"):
            load_prompt_rows(_cfg(train_size=2, heldout_size=2, **data))
