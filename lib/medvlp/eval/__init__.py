"""Evaluation: zero-shot findings / CT diseases, retrieval, linear probes, metrics with bootstrap CIs.

Modules, one job each: ``data`` (evaluation sets joined with their truth), ``prompts`` (templates and
class names), ``encode`` (frozen-model encodings, prompt ensembles), ``zero_shot`` (scores), ``metrics``
(AUROC, CIs, operating point, retrieval), ``linear_probe``, ``evaluate`` (one model's evaluation),
``stage`` (the ``zero_shot`` pipeline stage), ``tables`` and ``plots`` (its tables and figures).
"""
