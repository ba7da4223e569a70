"""The `r1lab` command: parses arguments, loads the config, calls one library function per command."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="r1lab: reasoning trained into language models by RL with rule-based rewards.")
train_app = typer.Typer(no_args_is_help=True, help="Training loops: GRPO (PPO when the config has a critic section) and SFT.")
app.add_typer(train_app, name="train")
pipeline_app = typer.Typer(no_args_is_help=True, help="Recipes: several stages, one command.")
app.add_typer(pipeline_app, name="pipeline")
console = Console()

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a config value: section.key=value")]  # noqa: UP045


PlanOpt = Annotated[bool, typer.Option("--plan", help="print what the run will do (r1lab plan) and exit")]
NprocOpt = Annotated[Optional[int], typer.Option(help="processes the run will use (default: $WORLD_SIZE or 1)")]  # noqa: UP045


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


def _run(run, config: Path, set_: list[str] | None, out: Path, parallel: bool = False, **kwargs):
    """Load CONFIG with its --set overrides and call `run(cfg, out, console=..., **kwargs)`; a
    config, data or file error is printed (naming the key or the file:line) with exit code 2.

    Under torchrun / accelerate launch (WORLD_SIZE > 1): a `parallel` command opens the process
    group and runs on every rank (only rank 0 prints); any other command runs on rank 0 alone,
    as one process, and the other ranks exit at once (no copies writing into one folder)."""
    from r1lab.config import load_config
    from r1lab.train.distributed import init_distributed, launched

    try:
        cfg = load_config(config, set_)
        if launched() and not parallel:
            if int(os.environ.get("RANK", "0")) != 0:
                print(f"rank {os.environ['RANK']}: this command is not data-parallel; it runs "
                      "on rank 0 alone", file=sys.stderr)
                return {}
        elif launched():
            world = init_distributed(timeout_s=cfg.train.dist_timeout_s)
            console.quiet = not world.is_main
        return run(cfg, out, console=console, **kwargs)
    except (ValueError, FileNotFoundError, KeyError) as exc:  # ConfigError, DataError included
        _fail(exc)


def _print_plan(config: Path, set_: list[str] | None, command: str, nproc: int | None) -> None:
    from r1lab.config import load_config
    from r1lab.plan import build_plan, render, world_size

    try:
        cfg = load_config(config, set_)
        plan = build_plan(cfg, command, world_size(nproc))
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _fail(exc)
    for part in render(plan, cfg):
        console.print(part, highlight=False)


@app.command("plan")
def plan_(
    config: Annotated[Path, typer.Argument(help="YAML config")],
    set_: SetOpt = None,
    nproc: NprocOpt = None,
    command: Annotated[str, typer.Option(help="the run to plan: grpo (PPO with a critic) or sft")] = "grpo",
) -> None:
    """What a run will do, before it starts (no model loaded): batch per optimiser step, globally
    and per process; off-policy degree; chosen functions; reference model; memory; no-op settings."""
    if command not in ("grpo", "sft"):
        _fail(ValueError(f"--command: grpo or sft, not {command!r}"))
    _print_plan(config, set_, command, nproc)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="random seed of the whole run")] = 1,
    config: Annotated[Optional[Path], typer.Option(help="config file (default: the embedded demo)")] = None,  # noqa: UP045
    set_: SetOpt = None,
    scenario: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="a finding of the paper: reflection, language, readability, distillation (default: r1zero, the plain demo)")] = None,
) -> None:
    """R1-Zero from scratch: pre-train a weak tiny base, GRPO it, compare on held-out problems."""
    from r1lab.config import ConfigError
    from r1lab.pipeline.demo import load_demo_config, run_demo

    try:
        sets = [*(set_ or []), *([f"scenario.name={scenario}"] if scenario else [])]
        cfg = load_demo_config(config, sets, scenario=scenario)
    except (ConfigError, ValueError) as exc:
        _fail(exc)
    run_demo(cfg, out, seed=seed, console=console)
    console.print(f"run folder: [bold]{out}[/] (summary.json, metrics.jsonl, samples.jsonl, base/, rl/)")


@train_app.command("grpo")
def train_grpo(
    config: Annotated[Path, typer.Argument(help="YAML config")],
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/grpo"),
    set_: SetOpt = None,
    resume: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="continue a run: bare --resume = the newest valid checkpoint of --out, or a path")] = None,
    plan: PlanOpt = False,
    nproc: NprocOpt = None,
) -> None:
    """GRPO on any local Hugging Face causal LM and any prompt dataset."""
    if plan:
        return _print_plan(config, set_, "grpo", nproc)
    from r1lab.pipeline.run import run_grpo

    result = _run(run_grpo, config, set_, out, parallel=True, resume=resume)
    if result.get("stopped"):  # SIGINT / SIGTERM: checkpointed, exit 128 + signal number
        raise typer.Exit(result["exit_code"])


@train_app.command("sft")
def train_sft(
    config: Annotated[Path, typer.Argument(help="YAML config (data.source, sft:, model:)")],
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/sft"),
    set_: SetOpt = None,
    plan: PlanOpt = False,
    nproc: NprocOpt = None,
) -> None:
    """Supervised fine-tuning on (prompt, completion) rows: cold start, post-rejection SFT, distillation."""
    if plan:
        return _print_plan(config, set_, "sft", nproc)
    from r1lab.pipeline.sft import run_sft

    _run(run_sft, config, set_, out)


@pipeline_app.command("r1")
def pipeline_r1(
    config: Annotated[Path, typer.Argument(help="YAML config (every section, plus pipeline:)")],
    out: Annotated[Path, typer.Option(help="run folder: one sub-folder per stage")] = Path("runs/r1"),
    set_: SetOpt = None,
) -> None:
    """DeepSeek-R1: cold-start SFT -> reasoning RL -> rejection sampling + SFT -> all-scenario RL.
    Run it again to skip finished stages and resume an interrupted one."""
    from r1lab.pipeline.r1 import run_r1

    _run(run_r1, config, set_, out)


@app.command()
def distill(
    config: Annotated[Path, typer.Argument(help="YAML config: model = the student, pipeline.teacher")],
    out: Annotated[Path, typer.Option(help="run folder: teacher samples, student checkpoint")] = Path("runs/distill"),
    set_: SetOpt = None,
) -> None:
    """Distillation: the teacher's samples that pass the rewards fine-tune the student (SFT only)."""
    from r1lab.pipeline.distill import run_distill

    _run(run_distill, config, set_, out)


@app.command()
def sample(
    config: Annotated[Path, typer.Argument(help="YAML config (model, data, rollout, rewards, reject)")],
    out: Annotated[Path, typer.Option(help="folder for sft.jsonl, samples.jsonl, summary.json")] = Path("runs/sample"),
    set_: SetOpt = None,
) -> None:
    """Rejection sampling: N samples per prompt, keep what passes the rewards, write an SFT dataset."""
    from r1lab.pipeline.reject import run_sample

    _run(run_sample, config, set_, out)


@app.command()
def score(
    reward: Annotated[str, typer.Option(help="reward name(s), comma-separated, or module:function")],
    input: Annotated[Path, typer.Option("--input", help="JSONL with completions")],  # noqa: A002
    output: Annotated[Path, typer.Option("--output", help="JSONL written with `rewards`")],
    completion_key: Annotated[str, typer.Option(help="field holding the completion")] = "completion",
    answer_key: Annotated[str, typer.Option(help="field holding the gold answer")] = "answer",
    tests_key: Annotated[str, typer.Option(help="field holding code tests")] = "tests",
    workers: Annotated[int, typer.Option(help="parallel scoring threads")] = 1,
) -> None:
    """Score existing completions offline; each row comes back with `rewards: {name: score}`."""
    from r1lab.registry import UnknownComponentError
    from r1lab.rewards.score import format_summary, score_file

    try:
        summary = score_file(input, output, reward, completion_key=completion_key,
                             answer_key=answer_key, tests_key=tests_key, workers=workers)
    except (UnknownComponentError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    console.print(format_summary(summary), highlight=False)
    console.print(f"scored rows written to [bold]{output}[/]")


@app.command("eval")
def eval_(
    config: Annotated[Path, typer.Argument(help="YAML config; model.path names the checkpoint")],
    out: Annotated[Path, typer.Option(help="folder for eval.json")] = Path("runs/eval"),
    set_: SetOpt = None,
) -> None:
    """pass@1 over k samples, cons@k and pass@k on held-out problems (the paper's protocol)."""
    from r1lab.pipeline.evaluate import run_eval

    _run(run_eval, config, set_, out)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a run folder (GRPO, PPO, SFT, demo, pipeline r1, distill)")]) -> None:
    """Self-contained HTML report of a run: alarms, config, curves, aha step, labelled samples."""
    from r1lab.analysis.report import build_report

    try:
        path = build_report(run_dir)
    except FileNotFoundError as exc:
        _fail(exc)
    console.print(f"report: [bold]{path}[/]")


@app.command()
def serve(
    checkpoint: Annotated[Path, typer.Argument(help="a local Hugging Face model directory (e.g. runs/demo/rl)")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    name: Annotated[Optional[str], typer.Option(help="model id in the API (default: the folder name)")] = None,  # noqa: UP045
    template: Annotated[str, typer.Option(help="prompt template: auto (chat template, else the run's), or a name from `r1lab list`")] = "auto",
    max_tokens: Annotated[int, typer.Option(help="default max new tokens per answer")] = 1024,
    temperature: Annotated[float, typer.Option(help="default temperature (the paper's 0.6)")] = 0.6,
    top_p: Annotated[float, typer.Option(help="default top-p (the paper's 0.95)")] = 0.95,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, mps")] = "auto",
    max_batch: Annotated[int, typer.Option(help="prompts of concurrent requests decoded together (1: one at a time)")] = 16,
    api_key: Annotated[Optional[str], typer.Option(envvar="R1LAB_API_KEY", help="every /v1 request needs 'Authorization: Bearer KEY' (else 401)")] = None,  # noqa: UP045
    max_request_bytes: Annotated[int, typer.Option(help="larger request bodies get a 413")] = 1 << 20,
    max_concurrent: Annotated[int, typer.Option(help="requests in flight past this get a 429")] = 64,
) -> None:
    """OpenAI-compatible chat server: thinking in `reasoning_content`, the answer in `content`."""
    from r1lab.serve import serve as run_server

    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] listening on {host} without --api-key: anyone who can "
                      "reach this port can use the model", highlight=False)

    def ready(model_name: str, used_template: str) -> None:
        console.print(f"serving [bold]{model_name}[/] (template {used_template}) at "
                      f"http://{host}:{port}/v1  (POST /v1/chat/completions; Ctrl-C stops)")

    try:
        run_server(checkpoint, host=host, port=port, name=name, template=template, max_tokens=max_tokens,
                   temperature=temperature, top_p=top_p, device=device, max_batch=max_batch, ready=ready,
                   api_key=api_key, max_request_bytes=max_request_bytes, max_concurrent=max_concurrent)
    except (ValueError, FileNotFoundError, KeyError, ImportError) as exc:
        _fail(exc)


@app.command("list")
def list_components() -> None:
    """Every registered component, by kind (rewards, advantages, losses, ...)."""
    import r1lab.algorithms  # noqa: F401  (registers)
    import r1lab.data.tasks  # noqa: F401
    import r1lab.data.templates  # noqa: F401
    import r1lab.rewards  # noqa: F401
    import r1lab.rollout.hf  # noqa: F401
    from r1lab.algorithms.options import KINDS, option_keys
    from r1lab.registry import REGISTRIES

    with_options = {registry.kind: kind for kind, (registry, _) in KINDS.items()}
    for kind, reg in sorted(REGISTRIES.items()):
        console.print(f"[bold]{kind}[/] ({len(reg)}): {', '.join(reg.names())}")
        for name in reg.names() if kind in with_options else []:  # the options each one takes
            keys = option_keys(with_options[kind], name)
            console.print(f"  {name}: {', '.join(keys) if keys else '(no options)'}", highlight=False)


def _bare_option(args: list[str], option: str, value: str) -> list[str]:
    """Give an option its default value when written bare (`--resume` -> `--resume=latest`):
    typer options cannot take an optional value."""
    return [f"{option}={value}" if a == option and (i + 1 == len(args) or args[i + 1].startswith("-"))
            else a for i, a in enumerate(args)]


def main() -> None:
    # r1lab shows its own progress bars; transformers' per-save/per-load tqdm bars only add noise
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from r1lab.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # pre-training, SFT, GRPO and evaluation all allocate per step
    from r1lab.train.distributed import shutdown

    try:
        app(_bare_option(sys.argv[1:], "--resume", "latest"))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    finally:
        shutdown()  # the process group of a launched run, if one was opened


if __name__ == "__main__":
    main()
