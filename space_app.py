"""Entry point of the Hugging Face Space: the README's front matter names this file as ``app_file``.

(The app lives in the ``app`` package, so a root ``app.py`` would shadow it.)

On a Space the data folder defaults to the persistent ``/data`` volume when the Space has one,
the app listens on 0.0.0.0 at the port the Space gives, and it asks for a login: "Sign in with
Hugging Face" (``hf_oauth: true`` in the README's front matter) for the Space's owner and the
users or organisations in ``MODELFORGE_ALLOWED_USERS``; or, when the Space secret
``MODELFORGE_AUTH`` is ``USER:PASS`` (or OAuth is unavailable), that password login
(``MODELFORGE_NO_AUTH=1`` opens it to anyone, not recommended). Without any it refuses to start
and says so in the Space's logs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> int:
    if "MODELFORGE_HOME" not in os.environ and Path("/data").is_dir() and os.access("/data", os.W_OK):
        os.environ["MODELFORGE_HOME"] = "/data"
    port = os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT") or "7860"
    argv = ["ui", "--host", "0.0.0.0", "--port", port]
    if os.environ.get("MODELFORGE_NO_AUTH", "").strip().lower() in ("1", "true", "yes"):
        argv.append("--no-auth")
    from app.main import main as cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
