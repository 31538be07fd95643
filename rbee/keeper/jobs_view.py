"""Showing a job's events in the terminal, with a progress bar."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from rbee.common.jobs import JobBody, JobRunner
from rbee.contracts.jobs import JobEvent, JobEventType, JobKind
from rbee.keeper.client import QueenClient
from rbee.keeper.output import CLIError, Output


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _transfer(event: JobEvent) -> str:
    """`12.3 MB/s, ETA 0:42` from a byte-progress event."""
    data = event.data or {}
    speed, eta = data.get("speed"), data.get("eta")
    parts = [f"{_gb(float(speed))}/s"] if speed else []
    if eta is not None:
        parts.append(f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")
    return ", ".join(parts)


class JobView:
    """Renders events as they come; `result()` gives the terminal event or raises `CLIError`."""

    def __init__(self, out: Output, title: str, verbose: bool = False) -> None:
        self._verbose = verbose
        self._last: JobEvent | None = None
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[amount]}"),
            TimeElapsedColumn(), TextColumn("[dim]{task.fields[detail]}"), console=out.err,
        )
        self._task = self._progress.add_task(title, total=None, detail="", amount="")

    def __enter__(self) -> JobView:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def show(self, event: JobEvent) -> None:
        self._last = event
        progress, task = self._progress, self._task
        if event.type is JobEventType.LOG:
            if self._verbose:
                progress.console.print(f"[dim]{event.message}")
        elif event.total and event.unit == "bytes":
            progress.update(task, total=event.total, completed=event.current or 0,
                            detail=_transfer(event), amount=f"{_gb(event.current or 0)}/{_gb(event.total)}")
        elif event.total:
            progress.update(task, total=event.total, completed=event.current or 0, detail=event.message[-60:],
                            amount=f"{int(event.current or 0)}/{int(event.total)}")
        elif event.type is JobEventType.DONE:
            total = progress.tasks[0].total or 1
            progress.update(task, total=total, completed=total, detail="")
        elif event.message and not event.type.terminal:
            progress.console.print(f"  {event.message}")

    def result(self) -> JobEvent:
        last = self._last
        if last is None or not last.type.terminal:
            raise CLIError("the job ended without a result")
        if last.type is JobEventType.ERROR:
            raise CLIError(last.message)
        if last.type is JobEventType.CANCELLED:
            raise CLIError("the job was cancelled")
        return last


def follow(client: QueenClient, job_id: str, out: Output, title: str, verbose: bool = False) -> JobEvent:
    """Follow a queen job until it ends; Ctrl-C cancels it."""
    try:
        with JobView(out, title, verbose) as view:
            events: Iterable[JobEvent] = client.job_events(job_id)
            for event in events:
                view.show(event)
    except KeyboardInterrupt:
        client.delete(f"/v1/jobs/{job_id}")
        raise CLIError("cancelled", code=130) from None
    return view.result()


def run_here(kind: JobKind, body: JobBody, out: Output, title: str, verbose: bool = False) -> JobEvent:
    """Run a job in this process (no queen), showing it the same way."""

    async def main(view: JobView) -> None:
        runner = JobRunner()
        job = runner.start(kind, body)
        events: AsyncIterator[JobEvent] = job.follow()
        try:
            async for event in events:
                view.show(event)
        finally:
            await runner.close()

    with JobView(out, title, verbose) as view:
        asyncio.run(main(view))
    return view.result()
