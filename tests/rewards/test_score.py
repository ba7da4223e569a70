import json

import pytest

from r1lab.rewards.score import format_summary, score_file


def test_score_file_round_trip(tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [
        {"id": 1, "completion": "<think>a</think><answer>68</answer>", "answer": "68"},
        {"id": 2, "completion": "<think>a</think><answer>7</answer>", "answer": "68"},
        {
            "id": 3,
            "output": "<answer>```python\ndef f(x): return x\n```</answer>",
            "checks": ["assert f(1) == 1"],
        },
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    summary = score_file(src, dst, "accuracy,format")
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["rewards"] for r in out[:2]] == [
        {"accuracy": 1.0, "format": 1.0},
        {"accuracy": 0.0, "format": 1.0},
    ]
    assert out[0]["reward_metrics"]["accuracy/extracted_answer"] == "68" and out[0]["id"] == 1
    assert summary["rows"] == 2 and summary["accuracy/mean"] == 1 / 2
    assert "accuracy/mean" in format_summary(summary)
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))

    summary = score_file(src, dst, ["code"], completion_key="output", tests_key="checks")
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert out[2]["rewards"] == {"code": 1.0}
    assert out[0]["rewards"] == {"code": 0.0}  # no code, no tests


def _score(tmp_path, rows, reward="accuracy", **kw):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = score_file(src, dst, reward, **kw)
    return [json.loads(line)["rewards"][reward] for line in dst.read_text().splitlines()], summary


def test_gsm8k_rows_are_graded_on_the_number_after_hashes(tmp_path):
    # the solution mentions 24 and 3 before the final 72: only 72 is the gold
    gold = "Each bag has 24 apples and there are 3 bags: 3 * 24 = <<3*24=72>>72\n#### 72"
    rows = [{"question": "q", "answer": gold, "completion": "<answer>72</answer>"},
            {"question": "q", "answer": gold, "completion": "<answer>24</answer>"},
            {"question": "q", "answer": gold, "completion": "<answer>3</answer>"}]
    scores, summary = _score(tmp_path, rows)
    assert scores == [1.0, 0.0, 0.0] and summary["accuracy/mean"] == 1 / 3


def test_math_rows_are_graded_on_the_last_box_of_the_solution(tmp_path):
    sol = r"Trying $x = \boxed{2}$ fails, since $2^2 = 4 \ne 9$. So $x = \boxed{3}$."
    rows = [{"problem": "p", "solution": sol, "completion": r"<answer>\boxed{3}</answer>"},
            {"problem": "p", "solution": sol, "completion": r"<answer>\boxed{2}</answer>"},
            {"problem": "p", "solution": sol, "completion": "<answer>9</answer>"}]
    assert _score(tmp_path, rows)[0] == [1.0, 0.0, 0.0]
    assert _score(tmp_path, rows, answer_key="solution")[0] == [1.0, 0.0, 0.0]


def test_a_missing_gold_is_an_error_naming_the_line(tmp_path):
    rows = [{"answer": "1", "completion": "<answer>1</answer>"}, {"completion": "<answer>1</answer>"}]
    with pytest.raises(ValueError, match=r"in\.jsonl:2: no gold answer for the accuracy reward: field 'answer'"):
        _score(tmp_path, rows)
    with pytest.raises(ValueError, match="field 'gold' is missing"):
        _score(tmp_path, rows[:1], answer_key="gold")
