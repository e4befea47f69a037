"""The local Prefect stack's public names, kept here for their callers: the stack itself lives in
:mod:`offclip.stack` (one module per role)."""

from __future__ import annotations

from offclip.stack import *  # noqa: F401,F403
from offclip.stack import __all__  # noqa: F401
