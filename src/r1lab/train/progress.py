"""A rich progress bar for training loops that shows the latest metrics beside the bar."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class StepProgress:
    """`with StepProgress("grpo", steps) as bar: bar.update(reward="0.52")` — disabled -> no-op."""

    def __init__(self, description: str, total: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            disable=not enabled,
        )
        self.task = self.progress.add_task(description, total=total, info="")

    def __enter__(self) -> StepProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, advance: int = 1, **info: str) -> None:
        text = "  ".join(f"{k}={v}" for k, v in info.items())
        self.progress.update(self.task, advance=advance, info=text)
