"""`rbee model pull|ls|rm|info|set|settings`: the models each hive holds, and their own settings."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, urlencode

import typer

from rbee.keeper.context import App
from rbee.keeper.model_pull import pull_model, pull_onto, targets
from rbee.keeper.output import CLIError, human_bytes, table

app = typer.Typer(help="Pull, list, inspect and remove models (GGUF files) on your hives; set their own settings.",
                  no_args_is_help=True)

HiveOption = Annotated[str | None, typer.Option("-a", "--hive", help="Only this hive (alias).")]


@app.command()
def pull(
    name: Annotated[str, typer.Argument(help="org/repo:QUANT, org/repo/file.gguf, or an alias like llama-3-8b.")],
    hive: Annotated[str | None, typer.Option(
        "-a", "--hive", help="The hive to pull onto, or several: -a h1,h2. Left out, the queen chooses the hive "
        "where the model would run best (a GPU with room before a CPU, the tightest fit, then the most free disk; "
        "never a hive whose disk cannot hold it) and says why.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Pull onto every ready hive.")] = False,
) -> None:
    """Put a GGUF model on a hive: copied over the LAN from a hive that has it, else downloaded from Hugging Face
    (HF_TOKEN for gated repos, HF_ENDPOINT for a mirror).

    Several hives (-a h1,h2 or --all) download side by side; one failing leaves the others; the exit code is 1.
    """
    ctx = App()
    client = ctx.queen()
    hives = targets(client, hive, every)
    if hives is not None and len(hives) > 1:
        pull_onto(client, ctx.out, name, hives)
        return
    entry = pull_model(client, ctx.out, name, hives[0] if hives else None)
    origin = str(entry.get("origin") or "")
    how = f", copied from {origin} over the LAN" if origin.startswith("hive ") else \
        ", downloaded from the hub" if origin == "the hub" else ""
    ctx.out.success(f"{entry.get('name')} is on {entry.get('hive')} ({human_bytes(entry.get('size_bytes', 0))}){how}")


@app.command("ls")
def list_(hive: HiveOption = None, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
          ) -> None:
    """The models in each hive's catalog, and each hive's disk (no network beyond the queen needed)."""
    ctx = App()
    query = f"?{urlencode({'hive': hive})}" if hive else ""
    client = ctx.queen()
    models = client.get(f"/v1/catalog{query}")
    if as_json:
        ctx.out.json(models)
        return
    disks = client.get(f"/v1/storage{query}")
    if not models:
        ctx.out.info("no models yet: `rbee model pull org/repo:Q4_K_M`, or `rbee infer -m ./model.gguf`")
        _print_disks(ctx, disks)
        return
    t = table("Models", "NAME", "HIVE", "SIZE", "QUANT", "PARAMS", "SOURCE", "STATE")
    for m in models:
        params = f"{m['parameter_count'] / 1e9:.2f} B" if m.get("parameter_count") else "?"
        state = "[red]missing[/red]" if m["missing"] else "ok"
        source = m.get("repo") or m["source"]
        t.add_row(m["name"], m["hive"], human_bytes(m["size_bytes"]), m.get("quantization") or "?", params,
                  source, state)
    ctx.out.out.print(t)
    _print_disks(ctx, disks)
    for m in models:
        if m["missing"]:
            ctx.out.warn(f"{m['name']}: {m['path']} is gone; `rbee model rm {m['name']}` forgets it")


def _print_disks(ctx: App, disks: list[dict[str, Any]]) -> None:
    t = table("Disk", "HIVE", "MODELS", "THEY USE", "FREE FOR MODELS")
    for d in disks:
        free = d.get("free_bytes")
        t.add_row(d["hive"], str(d["models"]), human_bytes(d["models_bytes"]),
                  human_bytes(free) if free is not None else "?")
    ctx.out.out.print(t)


@app.command("rm")
def remove(name: Annotated[str, typer.Argument(help="The model's catalog name.")], hive: HiveOption = None) -> None:
    """Remove a model from the catalog (and its files, when rbee downloaded them)."""
    ctx = App()
    query = f"?{urlencode({'hive': hive})}" if hive else ""
    entry = ctx.queen().delete(f"/v1/catalog/{quote(name, safe='')}{query}")
    what = "and deleted its files" if entry["source"] == "hf" else "(the file itself was left alone)"
    ctx.out.success(f"removed {entry['name']} from {entry['hive']} {what}")


@app.command()
def info(
    name: Annotated[str, typer.Argument(help="The model's catalog name or path.")],
    hive: HiveOption = None,
    ctx_size: Annotated[int | None, typer.Option("--ctx", min=1, help="Context tokens per slot.")] = None,
    slots: Annotated[int | None, typer.Option("--slots", min=1, help="Parallel slots.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Architecture, parameters, quantization, context, size, and the memory it needs to run."""
    ctx = App()
    params = urlencode({k: v for k, v in (("hive", hive), ("ctx", ctx_size), ("slots", slots)) if v})
    detail = ctx.queen().get(f"/v1/catalog/{quote(name, safe='')}" + (f"?{params}" if params else ""))
    if as_json:
        ctx.out.json(detail)
        return
    e, mem = detail["entry"], detail["memory"]
    rows = [
        ("name", e["name"]), ("hive", detail["hive"]), ("file", e["path"]),
        ("parts", str(len(e["files"]))), ("source", e.get("repo") or e["source"]),
        ("revision", e.get("revision") or "-"), ("architecture", e.get("architecture") or "?"),
        ("parameters", f"{e['parameter_count']:,}" if e.get("parameter_count") else "?"),
        ("quantization", e.get("quantization") or "?"),
        ("trained context", f"{e['context_length']:,} tokens" if e.get("context_length") else "?"),
        ("layers / embedding / heads / kv heads",
         f"{detail.get('block_count')} / {detail.get('embedding_length')} / {detail.get('head_count')} / "
         f"{detail.get('head_count_kv')}"),
        ("file size", human_bytes(e["size_bytes"])),
        (f"memory for {mem['slots']} x {mem['context_per_slot']} tokens",
         f"{human_bytes(mem['total'])} = weights {human_bytes(mem['weights'])} + KV cache "
         f"{human_bytes(mem['kv_cache'])} + compute {human_bytes(mem['compute'])} + overhead "
         f"{human_bytes(mem['overhead'])}"),
        ("runs on (memory free now)", detail.get("runs_on") or "?"),
    ]
    t = table(e["name"], "", "")
    for key, value in rows:
        t.add_row(key, value)
    ctx.out.out.print(t)


SETTINGS = ("context", "slots", "keep_alive", "hive", "device", "min_replicas", "max_replicas", "spread",
            "offload")


@app.command("set")
def set_(
    name: Annotated[str, typer.Argument(help="The model's name, as requests give it.")],
    context: Annotated[int | None, typer.Option("--ctx", min=16, help="Context tokens per slot.")] = None,
    slots: Annotated[int | None, typer.Option("--slots", min=1, help="Requests one worker serves at once.")] = None,
    keep_alive: Annotated[str | None, typer.Option("--keep-alive", help="How long an idle worker stays loaded: "
                                                   "5m, 1h, 300 (seconds), -1 (forever), 0.")] = None,
    on_hive: Annotated[str | None, typer.Option("--on-hive", help="Run its workers on this hive only.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="Run its workers on this device only "
                                               "(cpu, cuda0, ...), or spread each over these GPUs "
                                               "(cuda0+cuda1).")] = None,
    min_replicas: Annotated[int | None, typer.Option("--min-replicas", min=0, help="Workers kept loaded, "
                                                     "idle or not.")] = None,
    max_replicas: Annotated[int | None, typer.Option("--max-replicas", min=1, help="The most workers it gets "
                                                     "under load.")] = None,
    spread: Annotated[str | None, typer.Option("--spread", help="Spread each of its workers over these devices "
                                               "of several hives (HIVE:DEV+HIVE:DEV), even when one hive would "
                                               "hold it.")] = None,
    offload: Annotated[bool | None, typer.Option("--offload/--no-offload", help="Whether layers that do not fit "
                                                 "on its GPUs may go to RAM (the default) or it waits for GPU "
                                                 "room.")] = None,
    unset: Annotated[list[str] | None, typer.Option("--unset", help=f"Forget a setting ({', '.join(SETTINGS)}); "
                                                    "repeatable.")] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Forget all of its settings.")] = False,
) -> None:
    """Set a model's own settings (kept in ~/.config/rbee/models.toml; they apply to the next worker it gets)."""
    ctx = App()
    client = ctx.queen()
    unknown = sorted(set(unset or ()) - set(SETTINGS))
    if unknown:
        raise CLIError(f"--unset takes {', '.join(SETTINGS)}; not {', '.join(unknown)}")
    own: dict[str, Any] = {} if reset else client.get(f"/v1/settings/models/{quote(name, safe='')}")
    given = {"context": context, "slots": slots, "keep_alive": keep_alive, "hive": on_hive, "device": device,
             "min_replicas": min_replicas, "max_replicas": max_replicas, "spread": spread, "offload": offload}
    own.update({k: v for k, v in given.items() if v is not None})
    for key in unset or ():
        own.pop(key, None)
    saved = client.request("PUT", f"/v1/settings/models/{quote(name, safe='')}", json=own)
    ctx.out.success(f"{name}: " + (", ".join(f"{k}={v}" for k, v in saved.items()) or "no settings of its own"))


@app.command()
def settings(
    name: Annotated[str | None, typer.Argument(help="One model (all that have settings if left out).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show models' own settings (context, slots, keep_alive, pinned hive or device, replicas)."""
    ctx = App()
    client = ctx.queen()
    found = {name: client.get(f"/v1/settings/models/{quote(name, safe='')}")} if name else \
        client.get("/v1/settings/models")
    if as_json:
        ctx.out.json(found)
        return
    t = table("Model settings (unset: the defaults)", "MODEL", *(s.upper() for s in SETTINGS))
    for model, own in found.items():
        t.add_row(model, *(str(own.get(s, "")) for s in SETTINGS))
    ctx.out.out.print(t)
