"""``python -m captum_elfa.cli``: the ``captum-elfa`` command."""

import sys

from captum_elfa.cli import main

sys.exit(main())
