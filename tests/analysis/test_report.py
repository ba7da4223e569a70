import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from r1lab.analysis.behaviour import aha_step, reflection_counts, reflection_rate, think_length
from r1lab.analysis.report import build_report


def test_reflection_words_are_whole_words_case_insensitive():
    text = "<think>Wait, 7+9=15? Let me re-evaluate. Checkmate is not check.</think>"
    assert reflection_counts(text) == {"wait": 1, "check": 1, "re-evaluate": 1}
    assert reflection_rate(["wait", "no", "ok", "hmm"]) == 0.5


def test_think_length_and_aha_step():
    assert think_length("<think>12345</think><answer>1</answer>") == 5
    assert think_length("<think>123") == 3
    assert aha_step([10, 20, 30, 40], [0.95, 0.5, 0.91, 0.99], 0.9) == 30


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text, self.imgs, self.cells = [], [], []
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])
        self._in_td = tag == "td"

    def handle_data(self, data):
        self.text.append(data)
        if self._in_td:
            self.cells.append(data)


def test_report_shows_curves_aha_step_and_escaped_samples(tmp_path: Path):
    think = [0.4, 0.6, 0.95, 0.97]
    with (tmp_path / "metrics.jsonl").open("w") as fh:
        for i, t in enumerate(think, 1):
            fh.write(json.dumps({"step": i, "reward": t, "accuracy": t / 2, "think_rate": t,
                                 "completion_len": 10 * i}) + "\n")
    with (tmp_path / "samples.jsonl").open("w") as fh:
        for step in (1, 4):
            fh.write(json.dumps({"step": step, "prompt": "2+2", "answer": "4", "reward": 1.0,
                                 "completion": f"<think>wait {step}</think><answer>4</answer>"}) + "\n")
    page = build_report(tmp_path)
    parsed = _Collect()
    parsed.feed(page.read_text())
    text = "".join(parsed.text)
    assert "from step 3 on" in text
    assert "<think>wait 1</think><answer>4</answer>" in text  # shown as text, not markup
    assert len(parsed.imgs) == 1 and parsed.imgs[0].startswith("data:image/png;base64,")
    assert parsed.cells[:3] == ["reward", "0.400", "0.970"]


def test_report_of_a_folder_without_metrics_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        build_report(tmp_path)
