"""The `judge` reward against a REAL `r1lab serve` process (and the same checkpoint loaded
locally): the served model is a tiny Llama whose weights are set by hand so that, greedily, it
answers every rubric with "7" and stops, so the verdict is known exactly: 7/10."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from r1lab.rewards import RewardComposer
from r1lab.rewards.judge import Judge, parse_verdict, route, shown_answer

RUBRIC = "Rate the answer {answer} to {prompt}. Score:"


def seven_then_stop(folder: Path) -> Path:
    """A Llama whose layers add nothing (o_proj, down_proj = 0), so the last hidden state is the
    last token's embedding: dimension 0 is 1 for every token, dimension 1 only for "7". The
    untied head scores "7" at 1*h0 - 2*h1 and end-of-text at h1: after any token but "7" the
    model says "7" (5.66 vs 0); after "7" it stops (4 - 8 = -4 vs 4)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from r1lab.models.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=None)
    model = LlamaForCausalLM(cfg)
    seven, eos = tok.convert_tokens_to_ids("7"), tok.eos_token_id
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[:, 0] = 1.0
        emb[seven, 1] = 1.0
        model.model.norm.weight.fill_(1.0)
        head = model.lm_head.weight
        head.zero_()
        head[seven, 0], head[seven, 1] = 1.0, -2.0
        head[eos, 1] = 1.0
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder.parent / "config.yaml").write_text("data:\n  template: tiny\n")
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def judge_ckpt(tmp_path_factory) -> Path:
    return seven_then_stop(tmp_path_factory.mktemp("judge") / "ckpt")


@pytest.fixture(scope="module")
def judge_server(judge_ckpt):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "r1lab.cli", "serve", str(judge_ckpt), "--port", str(port),
                             "--name", "judge", "--max-tokens", "16"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=1):
                break
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("judge server did not start:\n" + proc.stdout.read())
            time.sleep(0.2)
    yield base + "/v1"
    proc.terminate()
    proc.wait(timeout=20)


def test_verdicts_parse():
    assert parse_verdict("Score: 7") == 0.7 and parse_verdict("**Rating:** 4.5") == 0.45
    assert parse_verdict("[[10]]") == 1.0 and parse_verdict("2 / 5") == 0.4
    assert parse_verdict("<think>Score: 1</think>Score: 9") == 0.9  # the judge's thinking is no verdict
    assert parse_verdict("yes, accept") == 1.0 and parse_verdict("Rejected.") == 0.0
    assert parse_verdict("Score: 12") is None and parse_verdict("") is None
    assert parse_verdict("8", scale=5) is None and parse_verdict("4", scale=5) == 0.8


def test_the_judge_sees_the_answer_not_the_thinking():
    assert shown_answer("<think>secret</think> <answer> Paris </answer>") == "Paris"
    with pytest.raises(ValueError, match="exactly one of"):
        Judge()
    with pytest.raises(ValueError, match="answer"):
        Judge(url="http://x", rubric="no slot")


def test_a_served_judge_scores_and_caches(judge_server):
    j = Judge(url=judge_server, rubric=RUBRIC)
    s = j("greet me", "<think>hmm</think><answer>hello</answer>")
    assert (s.value, s.metrics["failed"]) == (0.7, False)
    assert j("greet me", "<think>hmm</think><answer>hello</answer>").value == 0.7
    assert (j.stats.requests, j.stats.cache_hits) == (1, 1)  # the second was not asked again
    j("greet me", "<answer>hi</answer>")
    assert (j.stats.requests, j.stats.cache_hits, j.stats.failures) == (2, 1, 0)
    # the server's model id is checked: a wrong one is a 404 -> counted, scored 0, not cached
    bad = Judge(url=judge_server, model="gpt-x", rubric=RUBRIC)
    assert bad("q", "a").value == 0.0 and bad("q", "a").value == 0.0
    assert (bad.stats.failures, bad.stats.requests) == (2, 2)


def test_an_unreachable_judge_is_counted_not_fatal():
    j = Judge(url=f"http://127.0.0.1:{_free_port()}/v1", rubric=RUBRIC, timeout_s=5)
    s = j("q", "a")
    assert s.value == 0.0 and s.metrics == {"failed": True, "error": "URLError"}
    assert j.stats.failures == 1 and j.stats.requests == 1


def test_a_local_judge_model_gives_the_same_verdict(judge_ckpt):
    assert Judge(model_path=str(judge_ckpt), rubric=RUBRIC)("q", "a").value == 0.7
    j = Judge(model_path=str(judge_ckpt), rubric=RUBRIC, scale=5)  # "7" on a 0-5 scale: no verdict
    assert j("q", "a").value == 0.0 and j.stats.unparsed == 1


def test_route_sends_rows_without_gold_to_the_judge(judge_server):
    judge_kwargs = {"url": judge_server, "rubric": RUBRIC}
    comp = RewardComposer([{"name": "route", "kwargs": {"model_kwargs": judge_kwargs}}])
    rows = [{"prompt": "2+2", "answer": "4"}, {"prompt": "2+2", "answer": "4"},
            {"prompt": "write a haiku", "answer": ""}, {"prompt": "be kind"}]
    batch = comp(["<answer>4</answer>", "<answer>5</answer>", "<answer>old pond</answer>", "ok"], rows)
    assert batch.components["route"] == [1.0, 0.0, 0.7, 0.7]
    assert batch.metrics["route/judged_rate"] == 0.5 and batch.errors == 0
    assert [m["route/judged"] for m in batch.per_sample_metrics] == [False, False, True, True]
    assert route("<answer>4</answer>", {"answer": "4"}).metrics["judged"] is False
    assert json.dumps(batch.metrics)  # plain numbers, ready for metrics.jsonl


def test_rejection_sampling_asks_the_judge_for_rows_without_gold(tmp_path, judge_ckpt):
    """R1's stage 3: rows with a gold answer are kept when correct; rows without one when the
    judge's verdict reaches the threshold (here the judge always says 7/10)."""
    from r1lab.config import RunConfig
    from r1lab.pipeline.reject import run_sample

    src = tmp_path / "mixed.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "12+30", "answer": "42"}, {"question": "write a haiku"},
        {"question": "5+5", "answer": "10"}, {"question": "say hello", "answer": ""}]))
    judge_kwargs = {"model_path": str(judge_ckpt), "rubric": RUBRIC}
    cfg = RunConfig.model_validate({
        "model": {"tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
                           "intermediate_size": 64, "max_position_embeddings": 128}},
        "data": {"source": str(src)}, "rollout": {"max_new_tokens": 8},
        "rewards": {"components": [{"name": "route", "kwargs": {"model_kwargs": judge_kwargs}}]},
        "reject": {"samples_per_prompt": 3, "keep_per_prompt": 1, "min_scores": {"route": 0.7}},
        "log": {"progress": False}})
    summary = run_sample(cfg, tmp_path / "out")
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    by_q = {q: [s for s in samples if s["question"] == q] for q in ("12+30", "write a haiku", "5+5", "say hello")}
    for q in ("write a haiku", "say hello"):
        assert [s["rewards"]["route"] for s in by_q[q]] == [0.7] * 3 and all(s["passed"] for s in by_q[q])
    for q, gold in (("12+30", "42"), ("5+5", "10")):  # the untrained policy: kept only if right
        assert all(s["passed"] == (f"<answer>{gold}</answer>" in s["completion"]) for s in by_q[q])
    assert summary["judged_prompts"] == 2 and summary["samples"] == 12
    kept = [json.loads(line) for line in (tmp_path / "out" / "sft.jsonl").read_text().splitlines()]
    assert {"write a haiku", "say hello"} <= {k["question"] for k in kept}


def test_all_scenario_rl_routes_each_prompt_to_its_reward(tmp_path, judge_ckpt):
    """R1's stage 4 in one GRPO step: reasoning prompts scored by the rule, general prompts
    (no gold) by the judge; every judged completion gets the judge's 7/10."""
    from r1lab.config import RunConfig
    from r1lab.models.tiny import build_char_tokenizer, build_tiny_model
    from r1lab.train.grpo import build_trainer

    cfg = RunConfig.model_validate({
        "model": {"tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
                           "intermediate_size": 64, "max_position_embeddings": 128}},
        "rollout": {"group_size": 2, "max_new_tokens": 6},
        "rewards": {"components": [{"name": "route", "kwargs": {
            "model_kwargs": {"model_path": str(judge_ckpt), "rubric": RUBRIC}}}]},
        "train": {"steps": 1, "batch_size": 4}, "log": {"progress": False, "samples_per_step": 8}})
    rows = [{"prompt": "2+2", "answer": "4"}, {"prompt": "write a haiku", "answer": None},
            {"prompt": "3+3", "answer": "6"}, {"prompt": "say hello", "answer": None}]
    tok = build_char_tokenizer()
    trainer = build_trainer(cfg, build_tiny_model(cfg.model.tiny, tok, seed=0), tok, rows, tmp_path)
    (m,) = trainer.fit(progress=False)
    assert m["rewards/route/judged_rate"] == 0.5
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    judged = [s for s in samples if s["prompt"] in ("write a haiku", "say hello")]
    assert judged and all(s["rewards"]["route"] == 0.7 for s in judged)
    assert all(s["rewards"]["route"] in (0.0, 1.0) for s in samples if s not in judged)
