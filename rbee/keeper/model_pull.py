"""`rbee model pull` onto one hive, the hive the queen chooses, or several (`-a h1,h2`, `--all`).

Several hives get one `model.pull` job each, all started at once (they download side by side); their
progress is shown one after the other. A failure on one undoes nothing on the others; the summary names
each hive's outcome, and the exit code is 1 when any failed. Ctrl-C cancels every job still running.
"""

from __future__ import annotations

from typing import Any

from rbee.contracts.jobs import JobCreate, JobKind
from rbee.keeper.client import QueenClient
from rbee.keeper.jobs_view import follow
from rbee.keeper.output import CLIError, Output, human_bytes


def start_pull(client: QueenClient, name: str, hive: str | None) -> str:
    """Start a `model.pull` job (onto `hive`, or where the queen chooses when None); its id."""
    job = client.post("/v1/jobs", json=JobCreate(kind=JobKind.MODEL_PULL, model=name, hive=hive)
                      .model_dump(mode="json"))
    return str(job["job_id"])


def pull_model(client: QueenClient, out: Output, name: str, hive: str | None) -> dict[str, Any]:
    """Run a `model.pull` job with a progress bar (the queen's choice of hive, when it made one, is printed
    above it); the pulled catalog entry, with `hive` and, when the queen chose, `placement`."""
    done = follow(client, start_pull(client, name, hive), out, f"pull {name}" + (f" onto {hive}" if hive else ""))
    return done.data or {}


def targets(client: QueenClient, hives: str | None, every: bool) -> list[str] | None:
    """The hives `-a` / `--all` name, checked against the queen's before anything starts; None: let it choose."""
    if hives is not None and every:
        raise CLIError("give either -a HIVE[,HIVE...] or --all, not both")
    if hives is None and not every:
        return None
    known = {h["alias"]: h["state"] for h in client.get("/v1/hives")}
    if every:
        ready = [alias for alias, state in known.items() if state == "ready"]
        if not ready:
            raise CLIError("no hive is ready; `rbee hive list` shows them")
        return ready
    assert hives is not None
    wanted = list(dict.fromkeys(part.strip() for part in hives.split(",") if part.strip()))
    if not wanted:
        raise CLIError("-a needs a hive alias (or several: -a h1,h2)")
    unknown = [alias for alias in wanted if alias not in known]
    if unknown:
        raise CLIError(f"There is no hive {', '.join(repr(a) for a in unknown)}. Known hives: "
                       f"{', '.join(sorted(known)) or 'none (`rbee hive install ALIAS`)'}; nothing was pulled")
    return wanted


def pull_onto(client: QueenClient, out: Output, name: str, hives: list[str]) -> None:
    """Pull `name` onto every hive of `hives` (one job each, side by side) and summarise; `CLIError` if any failed."""
    jobs = {hive: start_pull(client, name, hive) for hive in hives}
    outcomes: dict[str, str] = {}
    failed: list[str] = []
    for hive, job_id in jobs.items():
        try:
            entry = follow(client, job_id, out, f"pull {name} onto {hive}").data or {}
        except CLIError as exc:
            if exc.code == 130:  # Ctrl-C: the one followed is cancelled; so are the others still running
                for other in list(jobs.values())[list(jobs).index(hive) + 1:]:
                    client.delete(f"/v1/jobs/{other}")
                raise
            outcomes[hive] = f"failed: {exc.message}"
            failed.append(hive)
            continue
        outcomes[hive] = f"{entry.get('name', name)} ({human_bytes(entry.get('size_bytes', 0))})"
    for hive, outcome in outcomes.items():
        (out.warn if hive in failed else out.success)(f"{hive}: {outcome}")
    if failed:
        raise CLIError(f"the pull failed on {len(failed)} of {len(hives)} hives ({', '.join(failed)}); "
                       "the others keep the model")
