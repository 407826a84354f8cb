"""`python -m lit_vlm.scaling fit ...` (the same as `python -m lit_vlm scaling fit ...`)."""

import sys

from lit_vlm.scaling.cli import main

sys.exit(main(sys.argv[1:]))
