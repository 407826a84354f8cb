"""lit_vlm: inference-optimal scaling of vision-language models, small enough to read and run on a laptop."""

from lit_vlm.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "__version__"]
