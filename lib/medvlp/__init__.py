"""medvlp: medical vision-language pre-training (ConceptCLIP, fVLM, RadCLIP) in one library.

Sub-packages, one job each:

- ``medvlp.data``     source-corpus contract, readers, the deterministic synthetic corpus
- ``medvlp.curate``   curation: validation, concept extraction, report decomposition, de-duplication,
                      splits, shards, curation report
- ``medvlp.losses``   contrastive / sigmoid / patch-concept / anatomy losses (pure functions of tensors)
- ``medvlp.models``   dual encoders (2D), fVLM 3D encoder, RadCLIP slice pooling
"""

__version__ = "0.1.0"
