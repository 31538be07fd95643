"""`rbee dashboard`: open the queen's web dashboard, signed in with this machine's admin token."""

from __future__ import annotations

import contextlib
import os
import sys
import webbrowser
from typing import Annotated
from urllib.parse import quote

import typer

from rbee.common import paths
from rbee.keeper.context import App


def _can_open_a_browser() -> bool:
    """A graphical session: elsewhere `webbrowser` falls back to text browsers that take over the terminal."""
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def dashboard(
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="Open it in the browser (default: when "
                                               "there is a graphical session); --no-open only prints the address.")]
    = True,
) -> None:
    """Open the web dashboard: hives, devices, workers, models, live charts, a chat playground and API keys."""
    ctx = App()
    ctx.queen()
    token = ""
    with contextlib.suppress(OSError):
        token = paths.admin_token_file().read_text().strip()
    # The token rides in the fragment, which browsers never send to a server; the page moves it to its
    # session storage and drops it from the address bar.
    url = f"{ctx.queen_url}/#token={quote(token, safe='')}" if token else f"{ctx.queen_url}/"
    if open_browser and _can_open_a_browser() and webbrowser.open(url):
        ctx.out.info(f"Opened the dashboard: {ctx.queen_url}/")
        return
    ctx.out.out.print(url, soft_wrap=True, highlight=False, markup=False)
    if token:
        ctx.out.info("This address signs you in as the queen's admin: keep it to yourself.")
    else:
        ctx.out.info("Sign in there with the queen's admin token (~/.config/rbee/admin.token on its machine).")
