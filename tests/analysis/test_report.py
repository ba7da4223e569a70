"""The report explains any run folder: GRPO, SFT and a `pipeline r1` folder (real runs of a
micro model), alarms at the top, curves drawn only from what the metrics hold, samples labelled
per reward component with the extracted gold, an aha step only for a policy that started
below the threshold."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from r1lab.analysis.behaviour import aha_step, reflection_counts, reflection_rate, think_length
from r1lab.analysis.report import build_report, gold_answer


def test_reflection_words_are_whole_words_case_insensitive():
    text = "<think>Wait, 7+9=15? Let me re-evaluate. Checkmate is not check.</think>"
    assert reflection_counts(text) == {"wait": 1, "check": 1, "re-evaluate": 1}
    assert reflection_rate(["wait", "no", "ok", "hmm"]) == 0.5


def test_think_length_and_aha_step():
    assert think_length("<think>12345</think><answer>1</answer>") == 5
    assert aha_step([10, 20, 30, 40], [0.95, 0.5, 0.91, 0.99], 0.9) == 30


class Page(HTMLParser):
    """Text, plot images (alt, src), sections by id."""

    def __init__(self, text: str):
        super().__init__()
        self.text, self.imgs, self.ids, self.cells = [], [], [], []
        self._td = False
        self.feed(text)
        self.all = "".join(self.text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append((a.get("alt"), a["src"]))
        if "id" in a:
            self.ids.append(a["id"])
        self._td = tag == "td"

    def handle_endtag(self, tag):
        self._td = False

    def handle_data(self, data):
        self.text.append(data)
        if self._td:
            self.cells.append(data)


def _write(folder: Path, metrics: list[dict], samples: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))


def test_samples_are_labelled_per_component_with_the_extracted_gold(tmp_path: Path):
    metrics = [{"step": i, "reward": 0.5, "reward/accuracy": 0.0, "reward/format": 1.0,
                "think_rate": t, "completion_len": 10.0} for i, t in enumerate([0.4, 0.6, 0.95, 0.97], 1)]
    wrong = {"step": 1, "prompt": "Natalia sold clips...", "answer": "48/2 = 24 in May.\n#### 72",
             "completion": "<think>wait</think><answer>70</answer>", "reward": 0.5,
             "rewards": {"accuracy": 0.0, "format": 1.0}}
    _write(tmp_path, metrics, [wrong, {**wrong, "step": 4}])
    page = Page(build_report(tmp_path).read_text())
    # gold as the grader sees it, the model's extracted answer, and each component on its own
    assert "gold 72 · answered 70" in page.all and "#### 72" not in page.all
    assert "accuracy 0.00" in page.all and "format 1.00" in page.all
    assert "<think>wait</think><answer>70</answer>" in page.all  # shown as text, not markup
    assert "from step 3 on, the policy thinks in at least 90%" in page.all
    titles = [alt for alt, _ in page.imgs]
    assert "training reward: total and per component (mean over completions)" in titles
    assert not any("grows" in t for t in titles)
    assert not any(t.startswith("KL") or t.startswith("policy entropy") for t in titles)  # not logged
    assert page.ids[0] == "alarms" and "No run-health alarm fired" in page.all


def test_no_aha_step_for_a_policy_that_thought_from_the_start(tmp_path: Path):
    _write(tmp_path, [{"step": i, "reward": 1.0, "think_rate": 0.97} for i in (1, 2, 3)], [])
    page = Page(build_report(tmp_path).read_text())
    assert "none to report: the policy already thought in 97% of its completions at step 1" in page.all


def test_alarms_from_the_metrics_are_at_the_top(tmp_path: Path):
    metrics = [{"step": i, "reward": 0.1 * i, "entropy": 0.9 if i < 6 else 0.001} for i in range(1, 12)]
    _write(tmp_path, metrics, [])
    page = Page(build_report(tmp_path).read_text())
    assert page.ids[0] == "alarms" and "Alarms (1)" in page.all
    assert "entropy_collapse (" in page.all and "step 10" in page.all


def test_gold_answer_extraction():
    assert gold_answer("#### 1,000") == "1,000"
    assert gold_answer(r"The answer is $\boxed{5}$") == "5"
    assert gold_answer("  12 ") == "12"


def test_report_of_a_folder_without_metrics_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        build_report(tmp_path)


MICRO = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
         "intermediate_size": 64, "max_position_embeddings": 128}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory) -> Path:
    """A real `pipeline r1` of a micro model: SFT, GRPO, rejection sampling, SFT, GRPO."""
    from r1lab.config import RunConfig
    from r1lab.pipeline.r1 import run_r1

    tmp = tmp_path_factory.mktemp("r1")
    cold = tmp / "cold.jsonl"
    cold.write_text("".join(json.dumps({"question": q, "completion": c}) + "\n" for q, c in
                            [("1+2", "<think>1+2=3</think><answer>3</answer>"),
                             ("4+4", "<think>4+4=8</think><answer>8</answer>")]))
    cfg = RunConfig.model_validate({
        "model": {"tiny": MICRO},
        "data": {"train_size": 20, "heldout_size": 4},
        "rollout": {"group_size": 2, "max_new_tokens": 8},
        "train": {"steps": 3, "batch_size": 2, "micro_batch_size": 4, "seed": 5},
        "sft": {"steps": 3, "batch_size": 2, "lr": 1e-3, "warmup_steps": 0},
        "reject": {"samples_per_prompt": 2, "num_prompts": 3, "min_scores": {}},
        "eval": {"num_problems": 2, "k": 1, "temperatures": [1.0], "greedy": False},
        "pipeline": {"cold_start": str(cold)},
        "log": {"progress": False},
    })
    run_r1(cfg, tmp / "out")
    return tmp / "out"


def test_report_of_a_grpo_run(pipeline_run: Path):
    page = Page(build_report(pipeline_run / "2_reasoning_rl").read_text())
    assert "GRPO" in page.all and page.ids[0] == "alarms"
    titles = {alt for alt, _ in page.imgs}
    assert {"training reward: total and per component (mean over completions)", "policy entropy (nats per token)",
            "loss", "gradient norm (before clipping)", "learning rate",
            "completion length (tokens) and share truncated at max_new_tokens",
            "reward errors per step, and no-answer / no-program / no-test rates"} <= titles, titles
    assert all(src.startswith("data:image/png;base64,") for _, src in page.imgs)
    metrics = [json.loads(x) for x in (pipeline_run / "2_reasoning_rl" / "metrics.jsonl").read_text().splitlines()]
    assert page.cells[page.cells.index("reward") + 1] == f"{metrics[0]['reward']:.3f}"
    assert "Early samples (step 1)" in page.all and "Late samples (step 3)" in page.all
    assert "Held-out evaluation of the final model" in page.all


def test_report_of_an_sft_run(pipeline_run: Path):
    page = Page(build_report(pipeline_run / "1_cold_start").read_text())
    assert "SFT" in page.all and "think_rate" not in page.all
    assert {alt for alt, _ in page.imgs} == {"loss", "gradient norm (before clipping)", "learning rate",
                                             "seconds per step"}


def test_report_of_a_pipeline_folder_has_the_stage_table_and_a_section_per_stage(pipeline_run: Path):
    page = Page(build_report(pipeline_run).read_text())
    for stage in ("1_cold_start", "2_reasoning_rl", "3_rejection_sampling", "3_rejection_sft",
                  "4_all_scenario_rl"):
        assert page.all.count(stage) >= 2, stage  # a row of the stage table and a section
    summary = json.loads((pipeline_run / "summary.json").read_text())
    assert f"T=1 {summary['reasoning_rl']['eval']['T=1']:.3f}" in page.cells
    assert "rejection sampling" in page.all and page.ids[0] == "alarms"
