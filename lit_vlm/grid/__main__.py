"""``python -m lit_vlm.grid``: the same as ``python -m lit_vlm grid``."""

import sys

from lit_vlm.__main__ import main

sys.exit(main(["grid", *sys.argv[1:]]))
