"""Names that the model, the data and the scaling analysis must agree on, defined once.

This module imports nothing, so the model package can use it without pulling in the data pipeline or the
synthetic benchmark generator.
"""

FAMILIES = ("reasoning", "ocr")
"""The two task families every split, metric and results row is grouped by."""

IMAGE_TOKEN = "<image>"
"""The one placeholder token a prompt carries; the VLM splices the V visual embeddings in its place."""
