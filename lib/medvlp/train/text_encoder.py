"""The ``pretrain_text`` stage: a small BERT pre-trained on the training split's own text.

All three papers start their text tower from a pretrained language model (ConceptCLIP: PubMedBERT;
fVLM: a BERT-family report encoder; RadCLIP: CLIP's text tower). medvlp's in-repo stand-in is trained
here, from the **train split only** of the curated corpus (never validation or test text):

1. texts: every train figure caption, and every sentence (:func:`~medvlp.curate.report_decomposition.split_sentences`)
   of every train CT report's findings and impression (:func:`training_texts`);
2. a WordPiece tokenizer (Hugging Face ``tokenizers``, BERT normalisation: lower case, accents
   stripped) with ``vocab_size`` entries, learnt on those texts deterministically (:func:`train_wordpiece`,
   :mod:`medvlp.train.wordpiece`);
3. a BERT (``transformers.BertForMaskedLM``) trained in two phases (:func:`pretrain_text_encoder`): ``steps`` of
   the standard masked-LM objective on all the texts (15% of the tokens selected; of them 80% masked, 10% replaced,
   10% kept), then ``concept_steps`` of a concept objective on the captions: a linear head on the mean of the
   token states predicts which concepts the caption names as present (multi-label, binary cross-entropy), the
   labels being the curation's own annotation of the train captions (lexicon matching with synonyms and
   negation; :func:`caption_concepts`). A pretrained encoder such as PubMedBERT knows the domain's vocabulary
   from its corpus; this one learns the corpus' concepts from the curation's annotation of the training
   captions (no truth file, no image, no validation or test text). ``concept_steps: 0`` keeps the masked LM
   alone. A held-out fraction of the training texts gives the validation losses;
4. saved as a Hugging Face directory (``config.json``, ``model.safetensors`` of the ``BertModel`` without its
   heads, the tokenizer files) that models load through open_clip's Hugging Face text tower
   (``text_cfg.hf_model_name: <that directory>``), plus ``train_log.csv`` and ``run_info.json``.

A user with network access points ``hf_model_name`` at a real pretrained encoder instead.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from medvlp.curate.report_decomposition import split_sentences
from medvlp.metrics_json import write_json
from medvlp.stage_args import stage_function
from medvlp.train.determinism import seed_everything
from medvlp.train.runlog import CSVLog, describe_device, git_revision, package_versions, utc_now
from medvlp.train.wordpiece import learn_wordpiece_vocab

__all__ = ["caption_concepts", "pretrain_text_encoder", "train_wordpiece", "training_texts"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def training_texts(curated_dir: str | Path, split: str = "train") -> list[str]:
    """The captions and report sentences of one split of the curated corpus, in manifest order.

    Args:
        curated_dir: the curate stage's output (``figures.parquet`` and ``ct.parquet``; either may be absent).
        split: the split to read (the stage reads ``train`` only).

    Raises:
        FileNotFoundError: neither manifest exists (run the curate stage first).
    """
    curated = Path(curated_dir)
    paths = [curated / "figures.parquet", curated / "ct.parquet"]
    if not any(p.is_file() for p in paths):
        raise FileNotFoundError(f"no curated manifest under {str(curated)!r}; run the curate stage first: "
                                "dvc repro curate")
    texts: list[str] = []
    if paths[0].is_file():
        table = pq.read_table(paths[0], columns=["caption", "split"]).to_pylist()
        texts += [r["caption"] for r in table if r["split"] == split and r["caption"]]
    if paths[1].is_file():
        for row in pq.read_table(paths[1], columns=["findings", "impression", "split"]).to_pylist():
            if row["split"] != split:
                continue
            for section in (row["findings"] or "", row["impression"] or ""):
                texts += [section[a:b] for a, b in split_sentences(section)]
    return texts


def caption_concepts(curated_dir: str | Path, split: str = "train") -> tuple[list[str], np.ndarray, list[str]]:
    """The captions of one split with the concepts the curation found named as present in them.

    Returns:
        (captions [M], labels ``[M, K]`` float32 (1 = concept k is mentioned and not negated), the K concept ids
        in sorted order); empty when ``figures.parquet`` is absent.
    """
    path = Path(curated_dir) / "figures.parquet"
    if not path.is_file():
        return [], np.zeros((0, 0), np.float32), []
    rows = [r for r in pq.read_table(path, columns=["caption", "split", "concepts"]).to_pylist()
            if r["split"] == split and r["caption"]]
    positive = [{c["concept_id"] for c in r["concepts"] or () if not c.get("negated")} for r in rows]
    ids = sorted(set().union(*positive)) if positive else []
    column = {c: k for k, c in enumerate(ids)}
    labels = np.zeros((len(rows), len(ids)), np.float32)
    for i, found in enumerate(positive):
        labels[i, [column[c] for c in found]] = 1.0
    return [r["caption"] for r in rows], labels, ids


def train_wordpiece(texts: Sequence[str], vocab_size: int, out_dir: str | Path | None = None):
    """A BERT WordPiece tokenizer learnt on ``texts``, as a ``transformers.BertTokenizerFast``: BERT's normalizer
    and pre-tokenizer, the vocabulary of :func:`~medvlp.train.wordpiece.learn_wordpiece_vocab` (deterministic,
    unlike ``tokenizers``' own trainer).

    Args:
        texts: the training texts.
        vocab_size: vocabulary entries (special tokens included).
        out_dir: if given, the tokenizer files are saved there.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import BertTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = Counter(w for t in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t)))
    vocab = learn_wordpiece_vocab(words, int(vocab_size), SPECIAL_TOKENS)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", do_lower_case=True)
    from tokenizers import processors

    fast.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", fast.cls_token_id), ("[SEP]", fast.sep_token_id)])
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def _trimmed(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """``ids`` [B, L] cut to its longest non-padding row (padding beyond it changes no output)."""
    return ids[:, :max(1, int((ids != pad_id).sum(1).max()))]


def _mlm_batches(ids: torch.Tensor, batch_size: int, rng: np.random.Generator, pad_id: int,
                 labels: np.ndarray | None = None):
    """Endless shuffled batches of rows of ``ids`` [N, L], epoch after epoch, each cut to its longest text
    (with ``labels`` [N, K]: ``(ids, labels)`` pairs)."""
    while True:
        order = rng.permutation(ids.shape[0])
        for start in range(0, len(order) - batch_size + 1, batch_size):
            rows = order[start:start + batch_size]
            batch = _trimmed(ids[rows], pad_id)
            yield batch if labels is None else (batch, labels[rows])


def _masked(ids: torch.Tensor, tokenizer, probability: float, generator: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of ``ids`` [B, L]: (inputs, labels with -100 outside the selected tokens)."""
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    chosen = (torch.rand(ids.shape, generator=generator) < probability) & ~special
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    inputs = ids.clone()
    draw = torch.rand(ids.shape, generator=generator)
    inputs[chosen & (draw < 0.8)] = tokenizer.mask_token_id
    replace = chosen & (draw >= 0.8) & (draw < 0.9)
    inputs[replace] = torch.randint(len(SPECIAL_TOKENS), len(tokenizer), ids.shape, generator=generator)[replace]
    return inputs, labels


def _mean_states(bert, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Mean of the last hidden states over the non-padding tokens: ``[B, L] -> [B, H]``."""
    mask = ids != pad_id
    states = bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    return (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)


@torch.no_grad()
def _evaluate(model, head, ids: torch.Tensor | None, concept_ids: torch.Tensor | None, concept_labels: np.ndarray,
              tokenizer, probability: float, batch_size: int, seed: int) -> dict:
    """Held-out masked-LM loss and accuracy (a fixed masking, the same at every evaluation) and concept loss."""
    model.eval()
    out = {"val_loss": float("nan"), "val_accuracy": float("nan"), "val_concept_loss": float("nan")}
    if ids is not None and ids.shape[0]:
        generator = torch.Generator().manual_seed(seed)
        total_loss = total_right = total = 0.0
        for start in range(0, ids.shape[0], batch_size):
            inputs, labels = _masked(_trimmed(ids[start:start + batch_size], tokenizer.pad_token_id), tokenizer,
                                     probability, generator)
            res = model(input_ids=inputs, attention_mask=(inputs != tokenizer.pad_token_id).long(), labels=labels)
            n = int((labels != -100).sum())
            total_loss += float(res.loss) * n
            total_right += float(((res.logits.argmax(-1) == labels) & (labels != -100)).sum())
            total += n
        out.update(val_loss=total_loss / max(total, 1), val_accuracy=total_right / max(total, 1))
    if head is not None and concept_ids is not None and concept_ids.shape[0]:
        pad = tokenizer.pad_token_id
        logits = torch.cat([head(_mean_states(model.bert, _trimmed(concept_ids[i:i + batch_size], pad), pad))
                            for i in range(0, concept_ids.shape[0], batch_size)])
        out["val_concept_loss"] = float(torch.nn.functional.binary_cross_entropy_with_logits(
            logits, torch.from_numpy(concept_labels)))
    model.train()
    return out


def _adamw(modules: Sequence[torch.nn.Module], lr: float, weight_decay: float, warmup_steps: int, steps: int):
    """AdamW (no decay on biases and norms) with linear warm-up and cosine decay over ``steps``."""
    params = [p for m in modules for p in m.parameters()]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=lr)
    schedule = lambda step: min(1.0, (step + 1) / max(warmup_steps, 1)) * 0.5 * (
        1 + math.cos(math.pi * min(step, steps) / max(steps, 1)))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), params


@stage_function("pretrain_text")
def pretrain_text_encoder(*, curated_dir: str, out_dir: str, metrics_path: str, seed: int, vocab_size: int,
                          context_length: int, hidden_size: int, num_layers: int, num_heads: int,
                          intermediate_size: int, steps: int, batch_size: int, lr: float, weight_decay: float,
                          warmup_steps: int, mlm_probability: float, concept_steps: int, concept_lr: float,
                          holdout_fraction: float, val_every: int, progress: bool = True) -> dict:
    """Train the WordPiece tokenizer and the BERT (masked LM, then concepts) on the train split; write ``out_dir``.

    Every argument but ``progress`` is a key of params.yaml's ``pretrain_text`` section, and has no default: a
    call without one raises :class:`~medvlp.stage_args.MissingParamsError` naming it.

    Args:
        curated_dir: the curate stage's output.
        out_dir: the Hugging Face directory written (tokenizer + ``BertModel`` weights + logs).
        metrics_path: JSON of the run's numbers (texts, vocabulary, losses, time).
        seed: seeds the hold-out draw, the batches, the masking and the initialisation.
        vocab_size: WordPiece vocabulary entries.
        context_length: tokens per text in training (and the model's position embeddings, at least
            the context length of every tower that loads it).
        hidden_size, num_layers, num_heads, intermediate_size: the BERT's size.
        steps, batch_size, lr, weight_decay, warmup_steps: the masked-LM phase (AdamW, linear warm-up, cosine decay).
        mlm_probability: fraction of tokens selected for prediction.
        concept_steps, concept_lr: the concept phase (same batch size, warm-up and schedule; 0 steps: none).
        holdout_fraction: training texts (and captions) held out for the validation losses (drawn with ``seed``).
        val_every: steps between validation losses.
        progress: a tqdm bar.

    Returns:
        the metrics written to ``metrics_path``.

    Raises:
        FileNotFoundError: no curated manifest. ValueError: fewer than 10 training texts.
    """
    from transformers import BertConfig, BertForMaskedLM

    started = time.perf_counter()
    seed_everything(seed)
    texts = training_texts(curated_dir, "train")
    if len(texts) < 10:
        raise ValueError(f"{curated_dir}: only {len(texts)} training texts; pretrain_text needs the train split's "
                         "captions and report sentences")
    rng = np.random.default_rng(seed)
    held = rng.random(len(texts)) < holdout_fraction
    train_texts = [t for t, h in zip(texts, held) if not h]
    val_texts = [t for t, h in zip(texts, held) if h]
    captions, concept_labels, concept_names = caption_concepts(curated_dir, "train")
    concept_steps = concept_steps if concept_names else 0
    held_captions = rng.random(len(captions)) < holdout_fraction
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_wordpiece(train_texts, vocab_size, out)
    pad = tokenizer.pad_token_id
    encode = lambda batch: tokenizer(batch, padding="max_length", truncation=True, max_length=context_length,
                                     return_tensors="pt")["input_ids"]
    train_ids, val_ids = encode(train_texts), encode(val_texts) if val_texts else None
    caption_ids = encode(captions) if concept_steps else None
    fit_rows, held_rows = np.flatnonzero(~held_captions), np.flatnonzero(held_captions)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
                        num_attention_heads=num_heads, intermediate_size=intermediate_size,
                        max_position_embeddings=context_length, pad_token_id=pad)
    model = BertForMaskedLM(config)
    head = torch.nn.Linear(hidden_size, len(concept_names)) if concept_steps else None
    log = CSVLog(out / "train_log.csv", ["step", "phase", "loss", "lr", "val_loss", "val_accuracy",
                                         "val_concept_loss", "elapsed_s"])
    log.start()
    generator = torch.Generator().manual_seed(seed)
    evaluate = lambda: _evaluate(model, head, val_ids, caption_ids[held_rows] if concept_steps else None,
                                 concept_labels[held_rows], tokenizer, mlm_probability, 256, seed)
    phases = [("mlm", steps, lr, [model], _mlm_batches(train_ids, min(batch_size, train_ids.shape[0]), rng, pad))]
    if concept_steps:
        phases.append(("concept", concept_steps, concept_lr, [model.bert, head],
                       _mlm_batches(caption_ids[fit_rows], min(batch_size, len(fit_rows)), rng, pad,
                                    labels=concept_labels[fit_rows])))
    model.train()
    first_val, val, step, row, phase_val = None, {}, 0, {}, {}
    bar = tqdm(total=steps + concept_steps, desc="pretrain text encoder", unit="step", disable=not progress)
    for phase, n_steps, phase_lr, modules, batches in phases:
        optimizer, scheduler, params = _adamw(modules, phase_lr, weight_decay, warmup_steps, n_steps)
        for phase_step in range(1, n_steps + 1):
            step += 1
            if phase == "mlm":
                inputs, labels = _masked(next(batches), tokenizer, mlm_probability, generator)
                loss = model(input_ids=inputs, attention_mask=(inputs != pad).long(), labels=labels).loss
            else:
                ids, targets = next(batches)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    head(_mean_states(model.bert, ids, pad)), torch.from_numpy(targets))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            lr_now = optimizer.param_groups[0]["lr"]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            row = {"step": step, "phase": phase, "loss": float(loss.detach()), "lr": lr_now,
                   "elapsed_s": time.perf_counter() - started}
            if step % val_every == 0 or phase_step == n_steps or step == 1:
                val = evaluate()
                first_val = first_val or dict(val)
                row.update(val)
            log.write(row)
            bar.update(1)
        phase_val[phase] = dict(val)
    bar.close()
    model.bert.save_pretrained(str(out))
    elapsed = time.perf_counter() - started
    metrics = {"n_texts": len(texts), "n_train_texts": len(train_texts), "n_holdout_texts": len(val_texts),
               "n_captions": len(captions), "n_concepts": len(concept_names) if concept_steps else 0,
               "vocab_size": len(tokenizer), "parameters": sum(p.numel() for p in model.bert.parameters()),
               "steps": steps, "concept_steps": concept_steps, "final_train_loss": row["loss"],
               "first_val": first_val, "final_val": val, "val_after_phase": phase_val, "elapsed_s": round(elapsed, 1)}
    write_json(out / "run_info.json", {**metrics, "updated": utc_now(), "git": git_revision(Path(__file__).parent),
                                       "versions": package_versions(("medvlp", "torch", "transformers", "tokenizers")),
                                       "device": describe_device(torch.device("cpu"), 1),
                                       "params": {"vocab_size": vocab_size, "context_length": context_length,
                                                  "hidden_size": hidden_size, "num_layers": num_layers,
                                                  "num_heads": num_heads, "intermediate_size": intermediate_size,
                                                  "steps": steps, "batch_size": batch_size, "lr": lr,
                                                  "mlm_probability": mlm_probability, "concept_steps": concept_steps,
                                                  "concept_lr": concept_lr, "seed": seed}},
               sort_keys=True, default=str)
    write_json(Path(metrics_path), metrics, sort_keys=True)
    return metrics
