"""Explainability: patch-concept heatmaps, localisation against lesion masks, concept annotation,
concept bottleneck, fVLM anatomy attention (the ``explain`` pipeline stage, ``stage``)."""
