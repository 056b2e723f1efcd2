"""External models (open_clip, Hugging Face) scored through the ModelUnderTest protocol, offline.

Every test runs with the Hugging Face and open_clip caches pointed at an empty ``tmp_path`` and sockets
refused, so a hub lookup that tried the network would fail loudly.
"""

from __future__ import annotations

import json
import re
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medvlp.eval.data import FigureSet, figure_tensors
from medvlp.eval.encode import encode_images, encode_texts
from medvlp.eval.evaluate import evaluate_findings, image_features
from medvlp.eval.external import (
    HFModel,
    OpenCLIPModel,
    describe,
    load_external_model,
    weights_checksum,
)
from medvlp.eval.model_under_test import ModelUnderTest, input_image_size
from medvlp.eval.prompts import FINDING_TEMPLATES, finding_prompts
from medvlp.lexicon import load_concept_lexicon

#: The smallest open_clip ViT (43 M parameters, builds in a fraction of a second, no timm download).
ARCH = "ViT-S-32-alt"
MODALITY = "fundus"
BIOMEDCLIP = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


@pytest.fixture(scope="module")
def lexicon():
    return load_concept_lexicon()


@pytest.fixture(scope="module")
def open_clip_file(tmp_path_factory):
    """A real open_clip ``ViT-S-32-alt`` with random weights (seed 0), saved as a plain state dict."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(ARCH, pretrained=None)
    path = tmp_path_factory.mktemp("weights") / "vit-s-32-alt.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def figures(lexicon) -> FigureSet:
    return figures_with_random_labels(lexicon)


@pytest.fixture(scope="module")
def twins(open_clip_file):
    """The same weights file as an adapter (:class:`OpenCLIPModel`) and as our own medvlp ``clip`` model."""
    from medvlp.models import build_model, load_open_clip_weights

    adapter = load_external_model("random-vit", {"open_clip": ARCH, "pretrained": str(open_clip_file)})
    ours = build_model("clip", clip_model=ARCH)
    assert load_open_clip_weights(ours, open_clip_file, strict=True) == ([], [])
    return adapter, ours


@pytest.fixture(scope="module")
def encoded(twins, figures):
    """The figures' image features by the adapter and by our model (encoded once for the module)."""
    adapter, ours = twins
    x = figure_tensors(figures.images, 224)
    return encode_images(adapter, x), encode_images(ours, x, with_patches=True)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty caches under ``tmp_path``, HF offline flags set, and no socket may connect."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # open_clip's ~/.cache/clip

    def refuse(*args, **kwargs):
        raise AssertionError("a test of offline loading tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return tmp_path


def figures_with_random_labels(lexicon, n: int = 8, seed: int = 0) -> FigureSet:
    """``n`` random RGB fundus figures, each labelled with random findings of the modality (every finding has
    positives and negatives)."""
    rng = np.random.default_rng(seed)
    classes = lexicon.for_modality(MODALITY)
    column = {c.id: i for i, c in enumerate(lexicon.concepts)}
    labels = np.zeros((n, len(lexicon.concepts)), dtype=bool)
    for concept in classes:
        labels[rng.permutation(n)[: n // 2], column[concept.id]] = True
    images = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(n)]
    return FigureSet([f"F{i}" for i in range(n)], [f"a fundus photograph number {i}" for i in range(n)],
                     [MODALITY] * n, images, labels, np.ones(n, dtype=bool), [c.id for c in lexicon.concepts],
                     [None] * n)


def findings_metrics(model, figures, lexicon, feats=None, captions=None) -> dict:
    """``evaluate_findings`` with the stage's default ``local_weight`` 0.5 (n_boot 20)."""
    feats = image_features(model, figures) if feats is None else feats
    return evaluate_findings(model, figures, lexicon, feats, local_weight=0.5, local_top_fraction=0.2, n_boot=20,
                             seed=0, captions=captions).metrics


def test_open_clip_adapter_gives_our_embeddings_for_the_same_weights(twins, encoded, figures, lexicon):
    adapter, ours = twins
    assert isinstance(adapter, OpenCLIPModel) and isinstance(adapter, ModelUnderTest)
    assert isinstance(adapter, torch.nn.Module)
    assert input_image_size(adapter) == input_image_size(ours) == 224
    assert adapter.embed_dim == ours.embed_dim == 256
    with torch.no_grad():
        assert float(adapter.logit_scale_exp()) == pytest.approx(float(ours.logit_scale_exp()))
    a, b = encoded
    assert a.patches is None and b.patches is None  # neither has PC-Align heads
    torch.testing.assert_close(a.embedding, b.embedding, atol=1e-5, rtol=0)
    assert torch.allclose(a.embedding.norm(dim=-1), torch.ones(len(figures)), atol=1e-5)
    assert a.embedding.std(dim=0).mean() > 1e-3  # distinct images, distinct embeddings
    texts = [p.text for c in lexicon.for_modality(MODALITY) for p in finding_prompts(c, None, FINDING_TEMPLATES)]
    torch.testing.assert_close(encode_texts(adapter, texts), encode_texts(ours, texts), atol=1e-5, rtol=0)


def test_open_clip_adapter_gives_our_findings_auroc_for_the_same_weights(twins, encoded, figures, lexicon,
                                                                         open_clip_file):
    adapter, ours = twins
    captions = encode_texts(ours, figures.captions)
    got = findings_metrics(adapter, figures, lexicon, encoded[0], captions)
    want = findings_metrics(ours, figures, lexicon, encoded[1], captions)
    # the configured local_weight 0.5 applies to models with concept heads only: global scoring for both
    assert got["scoring"] == want["scoring"] == "global" and got["local_weight"] == 0.0
    assert got["macro"]["n_classes"] == len(lexicon.for_modality(MODALITY)) and 0.0 <= got["macro"]["auc"] <= 1.0
    assert got["macro"]["auc"] == pytest.approx(want["macro"]["auc"], abs=1e-9)
    assert got["macro"]["ci_low"] == pytest.approx(want["macro"]["ci_low"], abs=1e-9)
    for finding, row in want["per_finding"].items():
        assert got["per_finding"][finding]["auc"] == pytest.approx(row["auc"], abs=1e-9)
    for mod, sim in want["prompt_similarity"].items():
        assert got["prompt_similarity"][mod] == pytest.approx(sim, abs=1e-5)

    spec = {"open_clip": ARCH, "pretrained": str(open_clip_file)}
    record = describe("random-vit", spec, adapter)
    assert record["sha256"] == weights_checksum(open_clip_file) and len(record["sha256"]) == 64
    assert record["kind"] == "open_clip" and record["image_size"] == 224 and record["source"] == ARCH
    assert json.loads(json.dumps(record)) == record


def _cache_repo(cache, repo: str, files: dict) -> str:
    """A Hugging Face cache entry of ``repo`` (``refs/main`` -> one snapshot) holding ``files``; returns the
    commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for name, content in files.items():
        if isinstance(content, str):
            (snapshot / name).write_text(content)
        else:
            (snapshot / name).symlink_to(content)
    return commit


def test_a_cached_hf_hub_open_clip_model_loads_offline_and_renormalises(offline, open_clip_file):
    """The BiomedCLIP path (``hf-hub:`` config + weights from the cache) with another mean/std."""
    import open_clip

    repo = "example/tiny-open-clip"
    config = {"model_cfg": open_clip.get_model_config(ARCH), "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    commit = _cache_repo(offline / "hf" / "hub", repo, {"open_clip_config.json": json.dumps(config),
                                                         "open_clip_pytorch_model.bin": open_clip_file})
    spec = {"open_clip": f"hf-hub:{repo}", "pretrained": f"hf-hub:{repo}"}
    adapter = load_external_model("tiny-hub", spec)
    reference = open_clip.create_model(ARCH, pretrained=None)
    reference.load_state_dict(torch.load(open_clip_file, weights_only=True))
    reference.eval()

    x = torch.randn(3, 3, 224, 224)  # OPENAI-normalised
    mean, std = torch.tensor(open_clip.OPENAI_DATASET_MEAN), torch.tensor(open_clip.OPENAI_DATASET_STD)
    raw = x * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
    with torch.inference_mode():
        want = reference.encode_image((raw - 0.5) / 0.25, normalize=True)
        got = encode_images(adapter, x).embedding
        unnormalised = reference.encode_image(x, normalize=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - unnormalised).abs().max() > 1e-3  # the re-normalisation did something
    record = describe("tiny-hub", spec, adapter)
    assert record["revision"] == commit and record["sha256"] == weights_checksum(open_clip_file)


def _save_tiny_hf_clip(folder, words: list[str]) -> None:
    """A tiny transformers CLIPModel (random, seed 0), a word-level tokenizer and an image processor with
    its own statistics and size, saved as a Hugging Face folder."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]",
                                                        special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                        bos_token="[BOS]", eos_token="[EOS]", model_max_length=24)
    tokenizer.save_pretrained(folder)
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 24, "pad_token_id": 0,
                     "bos_token_id": 2, "eos_token_id": 3},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 48,
                       "num_hidden_layers": 2, "num_attention_heads": 4},
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
                       image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]).save_pretrained(folder)


def test_a_hugging_face_dual_encoder_scores_through_the_protocol(offline, lexicon):
    from transformers import CLIPModel

    figures = figures_with_random_labels(lexicon, seed=1)
    prompts = [p.text for c in lexicon.for_modality(MODALITY) for p in finding_prompts(c, None, FINDING_TEMPLATES)]
    words = sorted(set(re.findall(r"\w+|[^\w\s]", " ".join(prompts + figures.captions).lower())))
    folder = offline / "tiny-hf-clip"
    _save_tiny_hf_clip(folder, words)
    spec = {"hf_model": str(folder), "revision": None, "trust_remote_code": False}
    adapter = load_external_model("tiny-hf", spec)
    assert isinstance(adapter, HFModel) and isinstance(adapter, ModelUnderTest)
    assert input_image_size(adapter) == 32 and adapter.embed_dim == 16 and adapter.context_length == 24
    reference = CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        assert float(adapter.logit_scale_exp()) == pytest.approx(float(reference.logit_scale.exp()))

    x = figure_tensors(figures.images, 32)  # OPENAI-normalised; the model wants mean 0.5 / std 0.5
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    pixels = (x * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1) - 0.5) / 0.5
    tok = adapter.tokenizer(prompts, padding="max_length", max_length=24, truncation=True, return_tensors="pt")
    assert int((tok["input_ids"] == 1).sum()) == 0  # every prompt word is in the vocabulary
    with torch.inference_mode():
        want_img = F.normalize(reference.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        want_txt = F.normalize(reference.get_text_features(**tok).pooler_output, dim=-1)
    torch.testing.assert_close(encode_images(adapter, x).embedding, want_img, atol=1e-5, rtol=0)
    torch.testing.assert_close(encode_texts(adapter, prompts), want_txt, atol=1e-5, rtol=0)

    out = findings_metrics(adapter, figures, lexicon)
    assert out["scoring"] == "global" and out["macro"]["n_classes"] == len(lexicon.for_modality(MODALITY))
    assert 0.0 <= out["macro"]["auc"] <= 1.0
    record = describe("tiny-hf", spec, adapter)
    assert record["kind"] == "hf_model" and record["image_size"] == 32
    assert record["sha256"] == weights_checksum(folder) != weights_checksum(folder / "config.json")


def test_missing_hub_models_fail_at_once_naming_the_cache_and_the_fetch_command(offline):
    cache = str(offline / "hf" / "hub")
    with pytest.raises(FileNotFoundError) as err:
        load_external_model("biomedclip", {"open_clip": f"hf-hub:{BIOMEDCLIP}", "pretrained": f"hf-hub:{BIOMEDCLIP}"})
    msg = str(err.value)
    assert BIOMEDCLIP in msg and cache in msg and f"hf download {BIOMEDCLIP}" in msg and "allow_download" in msg

    with pytest.raises(FileNotFoundError) as err:
        load_external_model("laion", {"open_clip": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"})
    msg = str(err.value)
    assert "ViT-B-32" in msg and "laion2b_s34b_b79k" in msg and cache in msg
    assert ("open_clip.create_model_and_transforms('ViT-B-32', pretrained='laion2b_s34b_b79k')" in msg)

    with pytest.raises(FileNotFoundError) as err:
        load_external_model("conceptclip", {"hf_model": "JerrryNie/ConceptCLIP", "revision": None,
                                            "trust_remote_code": True})
    msg = str(err.value)
    assert "JerrryNie/ConceptCLIP" in msg and cache in msg and "hf download JerrryNie/ConceptCLIP" in msg


def test_a_corrupt_weights_file_is_named(offline):
    broken = offline / "broken.pt"
    broken.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="is not a torch checkpoint") as err:
        load_external_model("broken", {"open_clip": ARCH, "pretrained": str(broken)})
    assert str(broken) in str(err.value)


def test_weights_of_another_architecture_name_the_key_and_both_shapes(offline, open_clip_file):
    with pytest.raises(ValueError) as err:
        load_external_model("wrong-arch", {"open_clip": "ViT-S-32", "pretrained": str(open_clip_file)})
    msg = str(err.value)
    found = re.search(r": (\S+) has shape \[([\d, ]+)\] but architecture 'ViT-S-32' expects \[([\d, ]+)\]", msg)
    assert found, msg
    assert str(open_clip_file) in msg and "architecture the weights were trained with" in msg
    key, file_shape, model_shape = found.groups()
    assert list(torch.load(open_clip_file, weights_only=True)[key].shape) == [int(n) for n in file_shape.split(",")]
    assert file_shape != model_shape


def test_a_bad_spec_names_the_model_and_the_accepted_keys():
    with pytest.raises(ValueError, match=r"'mystery'.*open_clip.*hf_model"):
        load_external_model("mystery", {"clip": "ViT-B-32"})
    with pytest.raises(ValueError, match=r"'typo'.*unknown keys \['pretrianed'\]"):
        load_external_model("typo", {"open_clip": ARCH, "pretrianed": "x.pt"})
    with pytest.raises(ValueError, match="needs 'pretrained'"):
        OpenCLIPModel.from_spec("no-weights", {"open_clip": ARCH})


def test_weights_checksum_of_a_folder_covers_every_file_in_order(tmp_path):
    (tmp_path / "b.bin").write_bytes(b"bbb")
    (tmp_path / "a.json").write_bytes(b"{}")
    first = weights_checksum(tmp_path)
    assert len(first) == 64 and first != weights_checksum(tmp_path / "b.bin")
    (tmp_path / "b.bin").write_bytes(b"bbc")
    assert weights_checksum(tmp_path) != first
