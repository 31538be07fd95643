"""`rbee engine install|status`: the llama-server that runs workers."""

from __future__ import annotations

from typing import Annotated

import typer

from rbee.contracts.jobs import JobCreate, JobKind
from rbee.hive import engine, toolchains
from rbee.hive.engine_sources import SOURCES
from rbee.keeper.context import App
from rbee.keeper.jobs_view import follow, run_here
from rbee.keeper.output import CLIError

app = typer.Typer(help="Build or inspect the inference engines (llama.cpp's llama-server, whisper.cpp's "
                  "whisper-server, stable-diffusion.cpp's sd-server).",
                  no_args_is_help=True)


@app.command()
def install(
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if this version is already built.")]
    = False,
    hive: Annotated[str, typer.Option("-a", "--hive", help="The hive to install on.")] = "localhost",
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Show the compiler's output.")] = False,
    local: Annotated[bool, typer.Option("--local", help="Build in this process, without the queen.")] = False,
    backend: Annotated[str | None, typer.Option("--backend", help="cpu, cuda, metal, vulkan or rocm (default: "
                                                "the GPU this machine has, when its toolkit is installed)")]
    = None,
    which: Annotated[str, typer.Option("--engine", help="llama (llama-server, for text models), whisper "
                                       "(whisper-server, for speech-to-text models) or sd (sd-server, for "
                                       "text-to-image models)")] = "llama",
) -> None:
    """Build llama-server (or, with --engine whisper, whisper-server; with --engine sd, sd-server) from its pinned
    source (cached per
    backend: a machine builds each once; several builds coexist, and each worker runs on the build that
    drives its device)."""
    ctx = App()
    if backend is not None and backend not in toolchains.BACKEND_FLAGS:
        raise CLIError(f"--backend takes one of: {', '.join(toolchains.BACKEND_FLAGS)}; not {backend!r}")
    if which not in SOURCES:
        raise CLIError(f"--engine takes one of: {', '.join(SOURCES)}; not {which!r}")
    src = SOURCES[which]
    title = f"engine install on {hive}"
    if local:
        if hive != "localhost":
            raise CLIError("--local builds on this machine only; drop -a/--hive")
        done = run_here(JobKind.ENGINE_INSTALL,
                        lambda emit: engine.install(emit, force=force, backend=backend, src=src), ctx.out, title,
                        verbose)
    else:
        client = ctx.queen()
        job = client.post("/v1/jobs", json=JobCreate(kind=JobKind.ENGINE_INSTALL, hive=hive, force=force,
                                                     backend=backend, engine=which).model_dump(mode="json"))
        done = follow(client, job["job_id"], ctx.out, title, verbose=verbose)
    data = done.data or {}
    how = {"configured": "is configured", "path": "is on PATH"}.get(str(data.get("source")), "was already built")
    ctx.out.success(f"{src.binary} {'built' if data.get('cached') == 'no' else how}: {data.get('path')}")


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Which llama-server each hive uses, where it came from, and its version."""
    ctx = App()
    report = ctx.queen().get("/v1/status")
    if as_json:
        ctx.out.json([{"hive": h["alias"], **h["engine"]} for h in report["hives"]])
        return
    for hive in report["hives"]:
        engine = hive["engine"]
        if engine.get("problem"):
            ctx.out.out.print(f"{hive['alias']}: [red]{engine['problem']}[/red]")
        else:
            ctx.out.out.print(f"{hive['alias']}: {engine['path']} ({engine['source']}), "
                              f"version {engine.get('version') or 'unknown'}")
        speech = engine.get("speech") or "none (rbee engine install --engine whisper)"
        ctx.out.out.print(f"  speech: {speech}")
        image = engine.get("image") or "none (rbee engine install --engine sd)"
        ctx.out.out.print(f"  image: {image}")
        ctx.out.out.print(f"  rpc: {engine.get('rpc') or 'none (rbee engine install --force)'}")
        others = {b: p for b, p in (engine.get("builds") or {}).items() if p != engine.get("path")}
        for backend, path in others.items():
            ctx.out.out.print(f"  also built: {backend} {path}")
