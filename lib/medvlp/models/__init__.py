"""medvlp model zoo: 2D dual encoders on open_clip towers, fVLM and a global baseline on a MONAI 3D ViT
or a small 3D conv net, RadCLIP slice pooling. Models return embeddings; losses live in ``medvlp.losses``.

Build with ``build_model(preset_or_config, **overrides)``. Presets: ``clip``, ``siglip``,
``conceptclip`` (kind ``dual_encoder``), ``fvlm``, ``ct_global`` (= ``ct_clip_global``), ``radclip``,
``radclip_meanpool``, and ``fvlm_official`` (the official fVLM release's shape, for ``medvlp convert-fvlm`` /
``fvlm_convert.load_fvlm_checkpoint``). Config keys by kind (defaults in ``configs.KIND_DEFAULTS``):

all kinds
    ``clip_model``        open_clip-schema CLIP config: a name (``medvlp-tiny`` [default], ``medvlp-small``,
                          or any config shipped with open_clip, e.g. ``ViT-B-16``) or a dict. Sizes the
                          image tower (2D kinds) and the text tower + embed_dim E (all kinds). A
                          ``text_cfg`` with ``hf_model_name`` (a local directory or a cached hub id;
                          ``hf_tokenizer_name``, ``hf_proj_type``, ``hf_model_pretrained``,
                          ``context_length``, ``hf_proj_bias``: a bias on the linear projection) builds a
                          BERT-family Hugging Face text tower.
    ``text_pool``         open_clip TextTransformer: ``"eot"`` (EOT token state) or ``"mean"`` (mean over
                          real token states), then the tower's text_projection; Hugging Face towers:
                          ``"cls"`` (the [CLS] state) or ``"mean"``, then the adapter's projection.
    ``init_logit_scale``  log t, default log(1/0.07).
    ``learnable_logit_scale``  true (default): t is learnt; false: t stays at its initial value (RadCLIP).
    ``init_logit_bias``   b (sigmoid losses; -10) or None for no bias parameter.
dual_encoder
    ``concept_heads``     build PC-Align heads ``image_proj`` / ``text_proj`` (MLP W -> hidden -> E) and
                          ``concept_logit_scale`` / ``concept_logit_bias``.
    ``head_hidden``       MLP hidden width (None = input width).
fvlm
    ``volume_tower``      ``"vit3d"`` (default; fVLM's MONAI 3D ViT) or ``"conv3d"`` (the small 3D conv net
                          of ``conv_volume_tower.py``, which learns on a CPU budget).
    ``vit3d``             ``monai.networks.nets.ViT`` kwargs (default 64x64x32 voxels, patch 8, width 128,
                          4 layers, 4 heads, mlp 256, 1 channel); medvlp's ``final_norm``: ``"every_depth"``
                          (default) or ``"last_block"`` (official fVLM: only the last block is normed).
    ``conv3d``            ``ConvEncoder3D`` config (default 64x64x32 voxels, channels 16/32/64, 2 blocks per
                          stage, stride 2 per stage: the same 8x8x4 token grid).
    ``token_depths``      blocks whose tokens are pooled (default [-2, -1]): ViT blocks, or the blocks of
                          the conv3d tower's last stage.
    ``anatomy_labels``    label values of the A anatomies (None = medvlp's anatomy lexicon, 10).
    ``pool_heads``        heads of the shared anatomy attention.
ct_global
    ``volume_tower``, ``vit3d``, ``conv3d``   as fvlm; mean over all last-block tokens, linear projection.
radclip (the dual_encoder keys, without concept heads, plus)
    ``slice_pooling``     ``"attention"`` or ``"mean"`` (ablation).
    ``slice_heads``, ``slice_layers``, ``slice_pos`` (``"learnable"`` | ``"sinusoidal"``), ``max_slices``.
    ``slice_chunk``       slices per 2D encoder call.
    ``freeze_text``, ``freeze_image``   freeze a tower at build time.
"""

from medvlp.models.anatomy_pooling import AnatomyAttentionPool, AnatomyMasks, anatomy_token_masks
from medvlp.models.checkpoint import (
    atomic_torch_save,
    load_medvlp_weights,
    load_model,
    load_open_clip_weights,
    read_model_file,
    save_model,
)
from medvlp.models.concept_spans import TokenizedConcepts, char_spans_to_token_spans, tokenize_with_concepts
from medvlp.models.configs import (
    DEFAULT_VIT3D,
    KIND_DEFAULTS,
    MODEL_KINDS,
    PRESETS,
    VOLUME_TOWERS,
    get_clip_config,
    list_clip_configs,
    resolve_model_config,
)
from medvlp.models.conv_volume_tower import DEFAULT_CONV3D, ConvEncoder3D
from medvlp.models.ct_global import CTGlobalCLIP
from medvlp.models.dual_encoder import DualEncoder, span_mean
from medvlp.models.factory import build_model, count_parameters
from medvlp.models.fvlm import FVLM
from medvlp.models.image_text_towers import ImageEncoder, MLPHead, TextEncoder
from medvlp.models.logit_scales import LOG_MAX_LOGIT_SCALE, MAX_LOGIT_SCALE
from medvlp.models.outputs import AnatomyOutput, DualOutput, ImageOutput, TextOutput, VolumeOutput
from medvlp.models.radclip import RadCLIP
from medvlp.models.slice_pooling import SlicePooling, encode_slices, sinusoidal_positions
from medvlp.models.tokenizers import ClipBPETokenizer, WordPieceTokenizer, build_tokenizer, local_hf_path
from medvlp.models.vit_volume_tower import ViT3DEncoder
from medvlp.models.volume_tower import build_volume_tower, has_volume_tower, input_volume_size, volume_size

__all__ = [
    "AnatomyAttentionPool", "AnatomyMasks", "AnatomyOutput", "CTGlobalCLIP", "ClipBPETokenizer", "ConvEncoder3D",
    "DEFAULT_CONV3D", "DEFAULT_VIT3D", "DualEncoder", "DualOutput", "FVLM", "ImageEncoder", "ImageOutput",
    "KIND_DEFAULTS", "LOG_MAX_LOGIT_SCALE", "MAX_LOGIT_SCALE", "MLPHead", "MODEL_KINDS", "PRESETS", "RadCLIP",
    "SlicePooling", "TextEncoder", "TextOutput", "TokenizedConcepts", "VOLUME_TOWERS", "ViT3DEncoder",
    "VolumeOutput", "WordPieceTokenizer", "anatomy_token_masks", "atomic_torch_save", "build_model",
    "build_tokenizer", "build_volume_tower", "char_spans_to_token_spans", "count_parameters", "encode_slices",
    "get_clip_config", "has_volume_tower", "input_volume_size", "list_clip_configs", "load_medvlp_weights",
    "load_model", "load_open_clip_weights", "local_hf_path", "read_model_file", "resolve_model_config",
    "save_model", "sinusoidal_positions", "span_mean", "tokenize_with_concepts", "volume_size",
]
