"""``python -m offclip.models.evaluate``: see :func:`offclip.models.evaluate.runner.main`."""

import sys

from .runner import main

sys.exit(main())
