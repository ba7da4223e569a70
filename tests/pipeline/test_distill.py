"""Distillation: the teacher samples, the student (the config's model) is fine-tuned on what
passed and evaluated on the held-out split; a finished run is not redone."""

from __future__ import annotations

import pytest
import yaml

from r1lab.config import ConfigError, RunConfig, TinyModelConfig
from r1lab.models.tiny import build_char_tokenizer, build_tiny_model
from r1lab.pipeline.distill import run_distill

MICRO = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
         "intermediate_size": 64, "max_position_embeddings": 128}


def _cfg(teacher) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"tiny": MICRO},  # the student
        "data": {"train_size": 20, "heldout_size": 4},
        "rollout": {"max_new_tokens": 10},
        "reject": {"samples_per_prompt": 2, "keep_per_prompt": 2, "num_prompts": 4, "min_scores": {}},
        "sft": {"steps": 30, "batch_size": 8, "lr": 1e-2, "warmup_steps": 0},
        "eval": {"num_problems": 4, "k": 1, "temperatures": [1.0], "greedy": True},
        "pipeline": {"teacher": str(teacher) if teacher else None},
        "train": {"seed": 2}, "log": {"progress": False}})


def test_the_student_learns_the_teachers_kept_samples(tmp_path):
    tok = build_char_tokenizer()
    teacher = tmp_path / "teacher"
    big = TinyModelConfig(**{**MICRO, "hidden_size": 64, "intermediate_size": 128})
    build_tiny_model(big, tok, seed=7).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    out = tmp_path / "distill"
    results = run_distill(_cfg(teacher), out)
    sampled, student = results["teacher_sampling"], results["student_sft"]

    def model_path(folder: str):
        return yaml.safe_load((out / folder / "config.yaml").read_text())["model"]["path"]

    assert model_path("1_teacher_sampling") == str(teacher)
    assert model_path("2_student_sft") is None  # the config's (tiny) student
    assert sampled["kept_rows"] == student["rows"] > 0
    assert student["last_loss"] < 0.5 * student["first_loss"]  # it fits the teacher's samples
    assert set(student["eval"]) == {"greedy", "T=1"}  # then held-out evaluation
    assert (out / "2_student_sft" / "eval" / "eval.json").is_file()
    assert run_distill(_cfg(teacher), out) == results  # done: read back, not redone


def test_distill_needs_a_teacher(tmp_path):
    with pytest.raises(ConfigError, match="pipeline.teacher"):
        run_distill(_cfg(None), tmp_path / "d")
    with pytest.raises(ConfigError, match="not a Hugging Face model directory"):
        run_distill(_cfg(tmp_path / "nowhere"), tmp_path / "d")
