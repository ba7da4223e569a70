"""The example configs for real models (configs/*_qwen2.5_*.yaml) run as written, two GRPO steps,
on a local stand-in for the real model (tests/standin.py: a Qwen2 from a config, a BPE tokenizer
trained here, a Qwen2.5-style chat template), with data files in each dataset's published format.
Only what a stand-in cannot hold is overridden: the paths, float32 on CPU, and sizes."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from r1lab.config import load_config  # noqa: E402
from standin import build_standin  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SMALL = ["model.dtype=float32", "model.device=cpu", "train.steps=2", "train.batch_size=2",
         "train.micro_batch_size=4", "rollout.group_size=2", "rollout.max_new_tokens=12",
         "train.save_every=0", "eval.every=0", "log.progress=false", "rewards.workers=2"]  # fmt: skip

GSM8K = [{"question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
          "answer": "In May she sold 48 / 2 = 24.\nShe sold 48 + 24 = 72 in all.\n#### 72"},
         {"question": "Weng earns $12 an hour. How much for 50 minutes?",
          "answer": "12 / 60 = 0.2 per minute.\n0.2 * 50 = 10.\n#### 10"}]  # fmt: skip
MATH = [{"problem": "What is $2 + 3$?", "solution": "We add: $2 + 3 = \\boxed{5}$.",
         "level": "Level 1", "type": "Algebra"},
        {"problem": "Solve $2x = 8$.", "solution": "Divide by 2, $x = 4$; so $\\boxed{4}$.",
         "level": "Level 1", "type": "Algebra"}]  # fmt: skip
MBPP = [{"task_id": 2, "text": "Write a function to add two numbers.", "code": "def add(a, b):\n    return a + b",
         "test_list": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"], "test_setup_code": ""},
        {"task_id": 3, "text": "Write a function to double a number.", "code": "def double(x):\n    return 2 * x",
         "test_list": ["assert double(2) == 4"], "test_setup_code": ""}]  # fmt: skip


HUMANEVAL = [{"task_id": "HumanEval/0", "prompt": "def add(a: int, b: int) -> int:\n    \"\"\"Sum of a and b.\"\"\"\n",
              "canonical_solution": "    return a + b\n", "entry_point": "add",
              "test": "METADATA = {}\n\n\ndef check(candidate):\n    for i in range(3):\n        assert candidate(i, 1) == i + 1\n"}]  # fmt: skip


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    return build_standin(tmp_path_factory.mktemp("standin") / "model", context=512)


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name, rows, template", [
    ("gsm8k_qwen2.5_0.5b", GSM8K, "chat"),
    ("math_qwen2.5_1.5b", MATH, "r1_zero"),
    ("code_qwen2.5_coder", MBPP, "chat"),
    ("code_qwen2.5_coder", HUMANEVAL, "chat"),
])  # fmt: skip
def test_example_config_runs_two_steps_on_its_standin(tmp_path, standin, name, rows, template):
    from r1lab.data.templates import load_template
    from r1lab.pipeline.run import run_grpo

    data = _write(tmp_path / "train.jsonl", rows)
    fmt = ["data.format=humaneval"] if rows is HUMANEVAL else []
    cfg = load_config(CONFIGS / f"{name}.yaml", [f"model.path={standin}", f"data.source={data}", *SMALL, *fmt])
    overlong = next(c for c in cfg.rewards.components if c.name == "overlong")
    assert overlong.kwargs["max_length"] == 12  # tied to the overridden rollout.max_new_tokens
    result = run_grpo(cfg, tmp_path / "run")
    assert result["steps"] == 2
    final = Path(result["final"])
    assert load_template(final)["template"] == template  # the prompts serve will build
    steps_saved = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert steps_saved and all(load_template(p)["template"] == template for p in steps_saved)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["reward_errors"] == 0 for m in metrics)  # every completion was scored
    assert all(m["rewards/overlong/length_mean"] <= 12 for m in metrics)
    if name.startswith("code"):  # the code reward ran on every completion, in the sandbox
        assert all("rewards/code/mean" in m and m["rewards/errors/code"] == 0 for m in metrics)


def test_a_model_directory_without_tokenizer_files_fails_before_any_run_folder(tmp_path, standin):
    from r1lab.pipeline.run import run_grpo

    bare = tmp_path / "weights_only"
    bare.mkdir()
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(standin / f, bare / f)
    data = _write(tmp_path / "train.jsonl", GSM8K)
    cfg = load_config(CONFIGS / "gsm8k_qwen2.5_0.5b.yaml", [f"model.path={bare}", f"data.source={data}", *SMALL])
    with pytest.raises(FileNotFoundError, match="has no tokenizer files"):
        run_grpo(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_auto_template_matches_the_model_and_is_saved_with_the_checkpoint(tmp_path, standin):
    from transformers import AutoTokenizer

    from r1lab.config import RunConfig
    from r1lab.data.templates import (
        SYSTEM,
        TEMPLATES,
        encode_prompts,
        load_template,
        resolve,
        save_template,
        saved_prompt,
    )
    from r1lab.models.tiny import build_char_tokenizer

    chat_tok = AutoTokenizer.from_pretrained(standin)
    plain_tok = AutoTokenizer.from_pretrained(standin)
    plain_tok.chat_template = None
    tiny = build_char_tokenizer()
    tiny.save_pretrained(tmp_path / "tiny")
    assert RunConfig().data.template == "auto"
    assert [resolve("auto", t) for t in (chat_tok, plain_tok, tiny)] == ["chat", "r1_zero", "tiny"]
    assert resolve("auto", AutoTokenizer.from_pretrained(tmp_path / "tiny")) == "tiny"  # reloaded too
    q = "What is 2 + 3?"
    assert TEMPLATES.get("auto")(q, chat_tok) == TEMPLATES.get("chat")(q, chat_tok)
    assert TEMPLATES.get("auto")(q, tiny) == "Q:What is 2 + 3?\nA:"
    # a chat prompt holds its own special tokens: no BOS added on top, as with template chat
    rows = [{"question": q}]
    assert encode_prompts(rows, chat_tok, "auto", "question") == encode_prompts(rows, chat_tok, "chat", "question")
    for tok, name in ((chat_tok, "chat"), (plain_tok, "r1_zero"), (tiny, "tiny")):
        ckpt = tmp_path / name
        ckpt.mkdir(exist_ok=True)
        save_template(ckpt, RunConfig(), tok)
        record = load_template(ckpt)
        assert record["template"] == name and (record.get("system") == SYSTEM) == (name == "chat")
        trained = TEMPLATES.get(name)(q, tok)
        assert saved_prompt(record, [{"role": "user", "content": q}], tok) == trained
    assert load_template(tmp_path / "nowhere") is None
