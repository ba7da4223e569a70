import json

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
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = score_file(src, dst, "accuracy,format")
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["rewards"] for r in out[:2]] == [
        {"accuracy": 1.0, "format": 1.0},
        {"accuracy": 0.0, "format": 1.0},
    ]
    assert out[0]["reward_metrics"]["accuracy/extracted_answer"] == "68" and out[0]["id"] == 1
    assert summary["rows"] == 3 and summary["accuracy/mean"] == 1 / 3
    assert "accuracy/mean" in format_summary(summary)

    summary = score_file(src, dst, ["code"], completion_key="output", tests_key="checks")
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert out[2]["rewards"] == {"code": 1.0}
    assert out[0]["rewards"] == {"code": 0.0}  # no code, no tests
