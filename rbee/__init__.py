"""rbee: a private AI cloud in one command."""

import sys

__version__ = "0.1.0"

# httpx's package imports its command-line client when rich, pygments and click are installed (rbee's CLI installs
# rich): ~4 MB in every daemon, for a `httpx` command rbee never runs. Marking the module absent makes httpx skip it
# (its __init__ falls back on ImportError); rbee's own processes are the only ones this touches.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
