"""``python -m retrikt.models``: see retrikt.models.cli."""
import sys

from retrikt.models.cli import main

sys.exit(main())
