"""BERT-family text towers through open_clip's Hugging Face adapter, their tokenizer, and the pretrain_text stage."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import yaml
from test_train_fixtures import write_text_encoder

from medvlp.models import WordPieceTokenizer, build_model, load_model, save_model, tokenize_with_concepts
from medvlp.models.tokenizers import local_hf_path
from medvlp.params import load_params, stage_params
from medvlp.train.runlog import read_csv
from medvlp.train.text_encoder import caption_concepts, pretrain_text_encoder, training_texts

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return write_text_encoder(tmp_path_factory.mktemp("text_encoder"))


def _clip_model(encoder_dir, **text):
    return {"embed_dim": 16, "vision_cfg": {"medvlp_conv": True, "image_size": 32, "channels": [8, 16], "blocks": 1},
            "text_cfg": {"hf_model_name": str(encoder_dir), "context_length": 24, "hf_proj_type": "linear", **text}}


def test_wordpiece_token_spans_cover_exactly_the_span_tokens(encoder_dir):
    tok = WordPieceTokenizer(str(encoder_dir))
    text = "Mild pleural effusion in the liver."
    start = text.index("pleural effusion")
    (span,) = tok.token_spans(text, [(start, start + len("pleural effusion"))], 24)
    ids = tok([text], context_length=24)[0]
    words = tok.inner.convert_ids_to_tokens(ids[span[0]:span[1]].tolist())
    assert "".join(w.removeprefix("##") for w in words) == "pleuraleffusion"
    assert ids[0] == tok.inner.cls_token_id and tok.pad_id == tok.inner.pad_token_id
    # a span ending inside a word takes the whole word; a span cut by truncation is dropped
    assert tok.token_spans(text, [(start, start + 3)], 24)[0][0] == span[0]
    assert tok.token_spans(text, [(start, start + 7)], 3) == [None]
    with pytest.raises(ValueError, match="not inside text"):
        tok.token_spans(text, [(0, 99)], 24)


def test_missing_hub_model_fails_with_the_command_that_fetches_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="hf download someorg/not-cached"):
        local_hf_path("someorg/not-cached")
    with pytest.raises(FileNotFoundError, match="dvc repro pretrain_text"):
        local_hf_path(str(tmp_path / "missing"))


@pytest.mark.parametrize(("preset", "pool"), [("conceptclip", "mean"), ("fvlm", "cls")])
def test_hf_tower_pools_as_documented(encoder_dir, preset, pool):
    extra = {"volume_tower": "conv3d", "conv3d": {"img_size": [16, 16, 8], "channels": [4, 8]}} \
        if preset == "fvlm" else {}
    model = build_model(preset, clip_model=_clip_model(encoder_dir), text_pool=pool, **extra).eval()
    ids = model.tokenize(["small lung nodule in the lung.", "no fracture."])
    out = model.encode_text(ids)
    mask = ids != model.text.tokenizer.pad_id
    hidden = model.text.tower.transformer(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    pooled = hidden[:, 0] if pool == "cls" else (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    expected = F.normalize(model.text.tower.proj(pooled), dim=-1)
    torch.testing.assert_close(out.embedding, expected)
    assert torch.equal(out.attention_mask, mask) and out.token_states.shape[:2] == ids.shape
    # the pretrained weights were loaded from the folder (not a fresh initialisation)
    from transformers import BertModel
    reference = BertModel.from_pretrained(str(encoder_dir), add_pooling_layer=False)
    torch.testing.assert_close(model.text.tower.transformer.embeddings.word_embeddings.weight,
                               reference.embeddings.word_embeddings.weight)


def test_scratch_tower_has_the_architecture_but_not_the_weights(encoder_dir):
    pretrained = build_model("conceptclip", clip_model=_clip_model(encoder_dir), text_pool="mean")
    scratch = build_model("conceptclip", clip_model=_clip_model(encoder_dir, hf_model_pretrained=False),
                          text_pool="mean")
    a, b = pretrained.text.state_dict(), scratch.text.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert not torch.equal(a["tower.transformer.embeddings.word_embeddings.weight"],
                           b["tower.transformer.embeddings.word_embeddings.weight"])


def test_hf_model_round_trips_through_save_and_load(encoder_dir, tmp_path):
    model = build_model("conceptclip", clip_model=_clip_model(encoder_dir), text_pool="mean").eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # weights that differ from the folder's
    save_model(model, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt").eval()
    ids = model.tokenize(["large cardiomegaly in the heart."])
    torch.testing.assert_close(loaded.encode_text(ids).embedding, model.encode_text(ids).embedding,
                               rtol=0, atol=0)
    captions = ["no lesion in the kidney.", "small fracture in the spleen."]
    tok = tokenize_with_concepts(model.tokenizer, captions, [[(3, 9)], [(6, 14)]], model.context_length)
    assert tok.spans.shape == (2, 2)
    concepts = model.concept_embeddings(model.encode_text(tok.ids).token_states, tok.spans, tok.owner)
    assert concepts.shape == (2, model.embed_dim)


def _curated_text(root, figures, ct):
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(figures), root / "figures.parquet")
    pq.write_table(pa.Table.from_pylist(ct), root / "ct.parquet")
    return root


def tiny_text_params(curated, out) -> dict:
    """params.yaml's ``pretrain_text`` section on ``curated``, writing under ``out``, shrunk to a second."""
    params = stage_params(load_params(REPO / "params.yaml"), "pretrain_text")
    return {**params, "curated_dir": str(curated), "out_dir": str(out / "enc"), "metrics_path": str(out / "m.json"),
            "seed": 0, "vocab_size": 300, "context_length": 32, "hidden_size": 16, "num_layers": 1, "num_heads": 2,
            "intermediate_size": 32, "steps": 3, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "concept_steps": 3,
            "concept_lr": 1e-3, "holdout_fraction": 0.1, "val_every": 2}


def test_pretrain_text_without_a_parameter_names_it_and_its_section(tmp_path):
    from medvlp.cli import main
    from medvlp.stage_args import MissingParamsError

    params = tiny_text_params(tmp_path / "nothing", tmp_path)
    del params["mlm_probability"]
    with pytest.raises(MissingParamsError, match=r"pretrain_text_encoder: missing \['mlm_probability'\] of "
                                                 r"params.yaml section 'pretrain_text'"):
        pretrain_text_encoder(**params, progress=False)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"pretrain_text": params}))
    with pytest.raises(SystemExit, match=r"params.yaml: pretrain_text_encoder: missing \['mlm_probability'\]"):
        main(["pretrain-text", "--params", str(params_file)])
    assert not (tmp_path / "enc").exists()


def test_pretrain_text_reads_the_train_split_only(tmp_path):
    train_words = ["effusion", "nodule", "cardiomegaly", "fracture", "atelectasis"]
    figures = [{"caption": f"Chest image with {w} number {i}.", "split": "train",
                "concepts": [{"concept_id": f"C{i % 5}", "negated": False}, {"concept_id": "C9", "negated": True}]}
               for i in range(40) for w in train_words[i % 5:i % 5 + 1]]
    figures += [{"caption": f"Zzsentinel zzsentinel case {i}.", "split": s,
                 "concepts": [{"concept_id": "CZ", "negated": False}]} for i in range(40) for s in ("test", "val")]
    ct = [{"findings": "The lungs show atelectasis. Small nodule.", "impression": "Atelectasis.", "split": "train"},
          {"findings": "Qqsentinel qqsentinel.", "impression": "Qqsentinel.", "split": "test"}]
    curated = _curated_text(tmp_path / "curated", figures, ct)
    texts = training_texts(curated, "train")
    assert len(texts) == 40 + 3 and "The lungs show atelectasis." in texts
    metrics = pretrain_text_encoder(**tiny_text_params(curated, tmp_path), progress=False)
    vocab = WordPieceTokenizer(str(tmp_path / "enc")).inner.get_vocab()
    assert "effusion" in vocab and "atelectasis" in vocab
    assert not any("sentinel" in piece or piece.startswith(("zz", "qq")) for piece in vocab)
    assert metrics["n_texts"] == 43 and metrics["n_train_texts"] + metrics["n_holdout_texts"] == 43
    # the concept phase learns the train captions' positive concepts only (not the negated C9, not test's CZ)
    captions, labels, names = caption_concepts(curated, "train")
    assert names == ["C0", "C1", "C2", "C3", "C4"] and labels.sum(1).tolist() == [1.0] * 40
    assert metrics["n_concepts"] == 5 and metrics["concept_steps"] == 3
    phases = [row["phase"] for row in read_csv(tmp_path / "enc" / "train_log.csv")]
    assert phases == ["mlm"] * 3 + ["concept"] * 3
    model = build_model("fvlm", clip_model=_clip_model(tmp_path / "enc"), text_pool="cls", volume_tower="conv3d",
                        conv3d={"img_size": [16, 16, 8], "channels": [4, 8]})
    assert model.text.context_length == 24
