"""`r1lab eval` on benchmark files and `r1lab train grpo` on a MATH-format file, end to end.

Both are slow tests (`pytest -m slow tests/evaluation/test_benchmarks.py`, ~3 min on the loaded
shared machine). The policy is a micro model fine-tuned here (a few seconds) to answer every prompt with
`<think>x</think><answer>7</answer>`, so what each benchmark should score is known by hand:
on a file whose golds are 7, 7, 7, 8 greedy pass@1 is 3/4, and the seeded bootstrap interval
over those per-problem scores (1, 1, 1, 0) is the one `bootstrap_ci` gives, computed by hand in
its docstring's way: the resampled mean is Binomial(4, 3/4) / 4, P(0.25) = 0.047 puts the 2.5%
point at 0.25 and the 97.5% point is 1.0.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r1lab.evaluation.metrics import bootstrap_ci
from r1lab.models.tiny import build_char_tokenizer, build_tiny_model

ANSWER = "<think>x</think><answer>7</answer>"


@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    """A micro checkpoint that answers 7 to every `Q:...\\nA:` prompt (greedy)."""
    from tests.conftest import MICRO

    torch.manual_seed(0)
    tok = build_char_tokenizer()
    model = build_tiny_model(MICRO, tok, seed=0)
    texts = [f"Q:{q}\nA:{ANSWER}{tok.eos_token}" for q in ("3+4", "1+6", "9-2", "14/2", "5+2", "7*1")]
    batch = tok(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # [B, T]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(120):
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = tmp_path_factory.mktemp("seven")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _r1lab(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "r1lab.cli", *args], capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.mark.slow  # ~45 s of CPU: fine-tuning the micro policy, then a CLI subprocess
def test_eval_on_two_benchmark_files_prints_pass1_with_intervals(seven, tmp_path):
    math = _jsonl(tmp_path / "math500.jsonl", [
        {"problem": p, "solution": f"work ... so \\boxed{{{g}}}"}
        for p, g in (("3+4", 7), ("1+6", 7), ("9-2", 7), ("2+6", 8))])
    gsm = _jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": q, "answer": f"steps 7 <<7=7>>\n#### {g}"} for q, g in (("5+2", 7), ("4+4", 8))])
    train = _jsonl(tmp_path / "train.jsonl", [{"question": "3+4", "answer": "7"}])
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"model: {{path: {seven}}}\ndata: {{source: {train}}}\nrollout: {{max_new_tokens: 40}}\n"
                   f"eval: {{benchmarks: [{math}, {gsm}], k: 2, temperatures: [0.6], greedy: true, "
                   "contamination_ngram: 2}\n")
    out = _r1lab("eval", str(cfg), "--out", str(tmp_path / "ev"))
    assert out.returncode == 0, out.stdout + out.stderr
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert set(res) == {"math500", "gsm8k"}
    m, g = res["math500"]["protocols"]["greedy"], res["gsm8k"]["protocols"]["greedy"]
    assert m["pass1"] == 0.75 and m["pass1_ci"] == list(bootstrap_ci([1, 1, 1, 0], seed=0)) == [0.25, 1.0]
    assert g["pass1"] == 0.5 and g["pass1_ci"] == [0.0, 1.0]  # (1, 0): means 0, 0.5, 1
    assert set(res["math500"]["protocols"]) == {"greedy", "T=0.6"}
    assert {"cons@2", "pass@2", "pass1_ci"} <= set(res["math500"]["protocols"]["T=0.6"])
    # the only training prompt "3+4" is the first MATH problem: 1 of 4 contaminated, none of GSM8K
    assert res["math500"]["contamination"]["contaminated"] == 1
    assert res["math500"]["contamination"]["examples"] == [0]
    assert res["gsm8k"]["contamination"]["contaminated"] == 0
    assert "math500: 4 problems" in out.stdout and "gsm8k: 2 problems" in out.stdout
    assert "[0.250, 1.000]" in out.stdout and "1/4 problems share a 2-gram" in out.stdout
    assert "format math (detected" in out.stderr or "math500" in out.stdout


@pytest.mark.slow  # ~40 s of CPU: two CLI subprocesses (train grpo, eval)
def test_train_grpo_on_a_math_file_with_problem_and_solution_fields(seven, tmp_path):
    rows = [{"problem": p, "solution": f"We compute: 2 + 3 = 5, then {p} = \\boxed{{7}}"}
            for p in ("3+4", "1+6", "9-2", "5+2")]
    data = _jsonl(tmp_path / "math.jsonl", rows)
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text(
        f"model: {{path: {seven}}}\n"
        f"data: {{source: {data}, prompt_field: problem, answer_field: solution, template: tiny}}\n"
        "rollout: {group_size: 2, max_new_tokens: 40}\n"
        "train: {steps: 2, batch_size: 2}\nlog: {progress: false}\n")
    out = _r1lab("train", "grpo", str(cfg), "--out", str(tmp_path / "run"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "format math (detected" in out.stderr
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "step" in r and any(k.startswith("reward") for k in r)]
    assert len(steps) == 2
    acc = [v for r in steps for k, v in r.items() if k.endswith("accuracy/mean")]
    errors = [v for r in steps for k, v in r.items() if "error" in k]
    assert acc and min(acc) > 0.5, steps[0]
    assert errors and all(v == 0 for v in errors), steps[0]
    # and `r1lab eval` on the same file
    ev = tmp_path / "eval.yaml"
    ev.write_text(f"model: {{path: {seven}}}\ndata: {{source: {data}, prompt_field: problem, "
                  f"answer_field: solution}}\nrollout: {{max_new_tokens: 40}}\n"
                  "eval: {k: 1, temperatures: [], greedy: true}\n")
    out = _r1lab("eval", str(ev), "--out", str(tmp_path / "ev"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["greedy"]["pass1"] == 1.0


def test_run_eval_routes_each_benchmark_to_its_reward_and_checks_overlap(tmp_path):
    """Fast, in process, on an untrained micro model (nothing it writes is right)."""
    from tests.conftest import MICRO

    from r1lab.config import RunConfig
    from r1lab.pipeline.evaluate import run_eval

    math = _jsonl(tmp_path / "m.jsonl", [{"problem": "3+4", "solution": r"\boxed{7}"},
                                         {"problem": "2+2", "solution": r"\boxed{4}"}])
    mbpp = _jsonl(tmp_path / "mbpp.jsonl", [{"text": "Write f returning 1.", "test_list": ["assert f() == 1"]}])
    train = _jsonl(tmp_path / "train.jsonl", [{"question": "3+4", "answer": "7"}])
    cfg = RunConfig.model_validate({
        "model": {"tiny": MICRO.model_dump()}, "data": {"source": str(train), "template": "tiny"},
        "rollout": {"max_new_tokens": 4},
        "eval": {"benchmarks": [str(math), str(mbpp)], "k": 2, "temperatures": [0.6],
                 "contamination_ngram": 2}})
    res = run_eval(cfg, tmp_path / "ev")
    assert (res["m"]["reward"], res["mbpp"]["reward"]) == ("accuracy", "code")
    assert res["m"]["protocols"]["T=0.6"]["pass1"] == 0.0 and res["m"]["protocols"]["T=0.6"]["pass1_ci"] == [0.0, 0.0]
    assert res["m"]["contamination"]["examples"] == [0] and res["mbpp"]["contamination"]["contaminated"] == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text()) == res
