"""Babel-ImageNet: multilingual zero-shot classification of CLIP-style image/text encoders.

Geigle, Timofte, Glavaš, "Babel-ImageNet: Massively Multilingual Evaluation of
Vision-and-Language Representations", ACL 2024 (arXiv 2306.08658). The benchmark translates
the ImageNet class names into ~100 languages (through BabelNet) and measures zero-shot image
classification (ZS-IC) of a bi-encoder in each language:

* a class's text embedding is the mean of the L2-normalised embeddings of its prompts (the
  class name put into each prompt template), renormalised (Radford et al.'s ensembling:
  ``w_c = normalise(mean_p normalise(f_text(p(name_c))))``);
* an image is assigned the class of highest cosine similarity; top-1 accuracy per language;
* a language is evaluated on the classes it has names for, and only on their images (the
  paper's partial translations: language L is a ``|C_L|``-way problem), and its gap to
  English is reported.

This module is the harness: a translation table (class id -> language -> names), prompt
templates per language, any encoder pair with open_clip's interface (``encode_image``,
``encode_text``, a tokenizer callable; open_clip models load from a LOCAL weights file, so
nothing is downloaded), and a packed hundred dataset whose class ids are the table's keys.

Because no multilingual CLIP can be downloaded here, the harness is exercised on a STAND-IN:
a tiny two-tower model that hundred trains itself (:func:`train_standin`) on synth100's
descriptive class names ("red striped star on sky") with CLIP's contrastive loss, and a tiny
pseudo-multilingual table made by deterministic word mappings (:func:`standin_table`). Every
result of the stand-in says so (``"stand_in": true``); its numbers say nothing about CLIP.
"""

from __future__ import annotations

import argparse
import csv
import json
import functools
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from hundred.errors import HundredError

if TYPE_CHECKING:  # torch is imported where it is used: ``hundred --help`` stays fast
    import numpy as np
    import torch
    from torch import nn

ENGLISH = "en"
LABEL_ONLY = ("{}",)  # the paper's "label" setting: the bare class name, no template
STANDIN_WEIGHTS = "standin.safetensors"
STANDIN_META = "standin.json"
STANDIN_KIND = "babel-standin-v1"

# The stand-in's own English templates (a few generic photo prompts, written here; users of
# real models pass the templates they want in the table or with --templates).
STANDIN_TEMPLATES = ("a photo of a {}.", "a {}.", "an image of a {}.", "a picture of the {}.",
                     "a small {}.", "a large {}.")


# -- the translation table -----------------------------------------------------------------

@dataclass
class TranslationTable:
    """``names[class_id][language]`` -> the class's names in that language (first = main);
    ``templates[language]`` -> prompt templates with one ``{}`` for the name."""

    names: dict[str, dict[str, list[str]]]
    templates: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""
    stand_in: bool = False  # the table says it is a stand-in (``"stand_in": true``)

    @property
    def languages(self) -> list[str]:
        found = {lang for by_lang in self.names.values() for lang in by_lang}
        return sorted(found, key=lambda lang: (lang != ENGLISH, lang))

    def class_names(self, language: str, class_ids: Sequence[str]) -> dict[int, list[str]]:
        """Dataset class index -> names, for the classes that ``language`` has names for."""
        return {index: self.names[cid][language] for index, cid in enumerate(class_ids)
                if cid in self.names and self.names[cid].get(language)}


def _names_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HundredError(f"{where}: expected a name or a list of names, got {value!r}")
    names = [v.strip() for v in value if v.strip()]
    return names


def _check_templates(templates: Any, where: str) -> list[str]:
    if isinstance(templates, str):
        templates = [templates]
    if (not isinstance(templates, list) or not templates
            or not all(isinstance(t, str) and t.count("{}") == 1 for t in templates)):
        raise HundredError(f"{where}: expected a non-empty list of templates, each with exactly "
                           f"one '{{}}' where the class name goes")
    return list(templates)


def load_class_index(path: str | Path) -> list[str]:
    """Class ids by index, one per line (the first word of a line, so ImageNet's
    ``LOC_synset_mapping.txt`` -- ``n01440764 tench, Tinca tinca`` -- works as it is)."""
    path = Path(path)
    if not path.is_file():
        raise HundredError(f"class index file {path} does not exist")
    ids = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines()
           if line.strip()]
    if len(set(ids)) != len(ids):
        raise HundredError(f"class index file {path} repeats a class id")
    return ids


def _from_release(raw: dict[str, Any], path: Path, class_index: Sequence[str] | None
                  ) -> dict[str, dict[str, list[str]]]:
    """The Babel-ImageNet release's layout ``{LANG: [[class indices], [labels]]}`` (indices
    into ImageNet-1k's class order), mapped to class ids with ``class_index``."""
    if class_index is None:
        raise HundredError(f"{path} is in the Babel-ImageNet release layout (language -> "
                           "[class indices, labels]); pass --class-index FILE with the class "
                           "ids in index order (e.g. ImageNet's LOC_synset_mapping.txt)")
    names: dict[str, dict[str, list[str]]] = {}
    for lang, (indices, labels) in raw.items():
        if len(indices) != len(labels):
            raise HundredError(f"{path}: {lang} has {len(indices)} indices, {len(labels)} labels")
        for index, label in zip(indices, labels):
            if not isinstance(index, int) or not 0 <= index < len(class_index):
                raise HundredError(f"{path}: {lang}: class index {index!r} outside the "
                                   f"{len(class_index)} ids of --class-index")
            found = _names_list(label, f"{path}: {lang}/{index}")
            if found:
                names.setdefault(class_index[index], {})[lang] = found
    return names


def _is_release(raw: dict[str, Any]) -> bool:
    return bool(raw) and all(isinstance(v, list) and len(v) == 2 and isinstance(v[0], list)
                             for v in raw.values())


def load_table(path: str | Path, class_index: Sequence[str] | None = None
               ) -> TranslationTable:
    """Read a translation table: JSON or TSV.

    JSON: ``{"classes": {CLASS_ID: {LANG: [names...] | name}}, "templates": {LANG: [...]}}``
    (``templates`` optional; a bare ``{CLASS_ID: {LANG: ...}}`` works too), or the
    Babel-ImageNet release's ``{LANG: [[indices], [labels]]}`` with ``class_index`` (class
    ids in index order). TSV: one row ``CLASS_ID<TAB>LANG<TAB>NAME[<TAB>NAME...]`` per class
    and language; ``#`` lines and a ``class_id`` header row are skipped. A class with no (or
    only empty) names in a language is missing in that language.
    """
    path = Path(path)
    if not path.is_file():
        raise HundredError(f"translation table {path} does not exist (or is not a file)")
    names: dict[str, dict[str, list[str]]] = {}
    templates: dict[str, list[str]] = {}
    stand_in = False
    if path.suffix.lower() in (".tsv", ".txt", ".tab"):
        with path.open(encoding="utf-8", newline="") as file:
            for number, row in enumerate(csv.reader(file, delimiter="\t"), start=1):
                if not row or not row[0].strip() or row[0].startswith("#"):
                    continue
                if number == 1 and row[0].strip().lower() in ("class_id", "wnid", "class"):
                    continue
                if len(row) < 3:
                    raise HundredError(f"{path}:{number}: expected CLASS_ID<TAB>LANGUAGE<TAB>"
                                       f"NAME[<TAB>NAME...], got {len(row)} column(s)")
                cid, lang = row[0].strip(), row[1].strip()
                found = _names_list(list(row[2:]), f"{path}:{number}")
                if found:
                    names.setdefault(cid, {}).setdefault(lang, []).extend(found)
    else:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise HundredError(f"translation table {path} is not valid JSON: {error}") from None
        if not isinstance(raw, dict):
            raise HundredError(f"{path}: expected a JSON object")
        if _is_release(raw):
            return TranslationTable(names=_from_release(raw, path, class_index),
                                    source=str(path))
        stand_in = bool(raw.get("stand_in", False))
        classes = raw["classes"] if "classes" in raw else raw
        if not isinstance(classes, dict):
            raise HundredError(f"{path}: 'classes' must map class ids to {{language: names}}")
        for lang, entry in (raw.get("templates") or {}).items():
            templates[str(lang)] = _check_templates(entry, f"{path}: templates[{lang!r}]")
        for cid, by_lang in classes.items():
            if cid in ("templates", "stand_in", "note") and "classes" not in raw:
                continue
            if not isinstance(by_lang, dict):
                raise HundredError(f"{path}: class {cid!r} must map languages to names")
            for lang, value in by_lang.items():
                found = _names_list(value, f"{path}: {cid}/{lang}")
                if found:
                    names.setdefault(str(cid), {})[str(lang)] = found
    if not names:
        raise HundredError(f"translation table {path} holds no class names")
    return TranslationTable(names=names, templates=templates, source=str(path),
                            stand_in=stand_in)


def load_templates(path: str | Path) -> dict[str, list[str]]:
    """A JSON file ``{LANG: [templates with one {}]}`` (e.g. machine-translated prompts)."""
    path = Path(path)
    if not path.is_file():
        raise HundredError(f"templates file {path} does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HundredError(f"templates file {path} is not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise HundredError(f"templates file {path}: expected {{language: [templates]}}")
    return {str(k): _check_templates(v, f"{path}: {k}") for k, v in raw.items()}


# -- encoders --------------------------------------------------------------------------------

@dataclass
class Encoders:
    """A CLIP-style encoder pair with open_clip's interface, plus how images reach it.

    ``preprocess`` maps a uint8 ``(N, H, W, 3)`` tensor to the image tower's input."""

    model: nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    name: str
    stand_in: bool = False


def _normalise_images(mean: Sequence[float], std: Sequence[float], size: int,
                      interpolation: str = "bilinear") -> Callable[[torch.Tensor], torch.Tensor]:
    """Batched resize (shorter side, then centre crop) and normalisation on the device."""
    import torch
    import torch.nn.functional as F

    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    mode = "bicubic" if interpolation == "bicubic" else "bilinear"

    def preprocess(images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        h, w = x.shape[-2:]
        if (h, w) != (size, size):
            scale = size / min(h, w)
            x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))),
                              mode=mode, align_corners=False, antialias=True)
            top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
            x = x[..., top:top + size, left:left + size].clamp(0, 1)
        return (x - mean_t.to(x.device)) / std_t.to(x.device)

    return preprocess


def load_open_clip(model_name: str, weights: str | Path | None, device: torch.device,
                   model_config: str | Path | None = None) -> Encoders:
    """An open_clip model from a LOCAL weights file (never a download).

    ``model_config`` (a JSON file with ``embed_dim``, ``vision_cfg``, ``text_cfg``) registers
    an architecture open_clip does not ship, named after the file's stem."""
    if weights is None:
        raise HundredError("an open_clip model needs --weights FILE (a local checkpoint); "
                           "hundred never downloads weights")
    weights = Path(weights)
    if not weights.is_file():
        raise HundredError(f"weights file {weights} does not exist (open_clip weights are read "
                           "from a local file; download them yourself)")
    import open_clip

    if model_config is not None:
        config_path = Path(model_config)
        if not config_path.is_file():
            raise HundredError(f"model config {config_path} does not exist")
        open_clip.add_model_config(config_path)
    if model_name not in open_clip.list_models():
        raise HundredError(f"open_clip has no model {model_name!r} (see open_clip.list_models(), "
                           "or pass --model-config FILE for your own architecture)")
    try:
        model, _, _ = open_clip.create_model_and_transforms(
            model_name, pretrained=str(weights), device=device)
        tokenizer = open_clip.get_tokenizer(model_name)
    except (RuntimeError, KeyError, ValueError, OSError) as error:
        raise HundredError(f"cannot load open_clip {model_name} from {weights}: "
                           f"{str(error).splitlines()[0][:300]}") from None
    model.eval()
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    preprocess = _normalise_images(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)),
                                   cfg.get("std", (0.26862954, 0.26130258, 0.27577711)),
                                   int(size), cfg.get("interpolation", "bicubic"))
    return Encoders(model=model, tokenizer=tokenizer, preprocess=preprocess,
                    name=f"open_clip:{model_name}", stand_in=False)


# -- zero-shot classification ----------------------------------------------------------------

def prompt_texts(names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every name in every template (``replace``, so braces inside a name are harmless)."""
    return [template.replace("{}", name) for name in names for template in templates]


def encode_texts(encoders: Encoders, texts: list[str], device: torch.device,
                 batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings ``(len(texts), D)`` in float32."""
    import torch
    import torch.nn.functional as F

    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            tokens = encoders.tokenizer(texts[start:start + batch_size]).to(device)
            with _autocast(device):
                out.append(encoders.model.encode_text(tokens).float())
    return F.normalize(torch.cat(out), dim=-1)


def class_embeddings(encoders: Encoders, names_per_class: Sequence[Sequence[str]],
                     templates: Sequence[str], device: torch.device, batch_size: int = 256
                     ) -> torch.Tensor:
    """``(K, D)``: per class the renormalised mean of its normalised prompt embeddings."""
    import torch
    import torch.nn.functional as F

    texts, owner = [], []
    for k, names in enumerate(names_per_class):
        prompts = prompt_texts(names, templates)
        texts += prompts
        owner += [k] * len(prompts)
    embeddings = encode_texts(encoders, texts, device, batch_size)
    index = torch.tensor(owner, device=embeddings.device)
    sums = torch.zeros(len(names_per_class), embeddings.shape[1], device=embeddings.device)
    sums.index_add_(0, index, embeddings)
    counts = torch.bincount(index, minlength=len(names_per_class)).clamp_min(1)
    return F.normalize(sums / counts[:, None], dim=-1)


def image_embeddings(encoders: Encoders, images: np.ndarray, device: torch.device,
                     batch_size: int = 256) -> torch.Tensor:
    """L2-normalised image embeddings of uint8 ``(N, H, W, 3)`` images."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
            x = encoders.preprocess(batch.to(device))
            with _autocast(device):
                out.append(encoders.model.encode_image(x).float())
    return F.normalize(torch.cat(out), dim=-1)


def zero_shot_top1(image_emb: torch.Tensor, labels: torch.Tensor, class_emb: torch.Tensor,
                   classes: Sequence[int]) -> tuple[float, int]:
    """Top-1 of a ``len(classes)``-way problem: only images whose label is in ``classes``,
    scored against only those classes (``class_emb`` row i belongs to ``classes[i]``).
    Returns (accuracy, number of images)."""
    import torch

    class_index = torch.as_tensor(list(classes), device=labels.device)
    keep = torch.isin(labels, class_index)
    if not bool(keep.any()):
        return float("nan"), 0
    # position of each kept image's label inside ``classes``
    lookup = torch.full((int(max(int(labels.max()), int(class_index.max()))) + 1,), -1,
                        dtype=torch.long, device=labels.device)
    lookup[class_index] = torch.arange(len(class_index), device=labels.device)
    targets = lookup[labels[keep]]
    predictions = (image_emb[keep] @ class_emb.T).argmax(dim=1)
    return float((predictions == targets).float().mean()), int(keep.sum())


def evaluate_languages(encoders: Encoders, class_ids: Sequence[str], images: np.ndarray,
                       labels: np.ndarray, table: TranslationTable, device: torch.device,
                       languages: Sequence[str] | None = None, english: str = ENGLISH,
                       names: str = "first", templates: dict[str, list[str]] | None = None,
                       label_only: bool = False, batch_size: int = 256) -> dict[str, Any]:
    """Top-1 per language on its available classes, and the gap to English.

    For language L with classes C_L (those with a name in L): ``top1`` is the |C_L|-way
    accuracy on the images of C_L. The gap to English compares like with like: on the
    classes S = C_L ∩ C_en, ``gap_to_english = top1_L(S) - top1_en(S)`` (both |S|-way);
    ``gap_to_english_full`` is ``top1`` minus English's top-1 on all of C_en (the paper's
    tables put each language next to English ImageNet).
    ``names``: "first" uses a class's first name per language (the paper: one label per
    class); "all" ensembles every name x template. Templates per language: ``templates``
    (e.g. from --templates), else the table's, else the bare label; ``label_only`` forces
    the bare label everywhere (the paper's "label" setting)."""
    import numpy as np
    import torch

    if names not in ("first", "all"):
        raise HundredError(f"names must be 'first' or 'all', got {names!r}")
    available = table.languages
    if english not in available:
        raise HundredError(f"the table has no names in the English reference language "
                           f"{english!r} (languages: {', '.join(available)})")
    wanted = list(languages) if languages else available
    unknown = [lang for lang in wanted if lang not in available]
    if unknown:
        raise HundredError(f"languages not in the table: {', '.join(unknown)} "
                           f"(it has {', '.join(available)})")
    if english not in wanted:
        wanted = [english] + wanted
    matched = [cid for cid in class_ids if cid in table.names]
    if not matched:
        raise HundredError(f"no class id of the data matches the table's keys (data: "
                           f"{', '.join(list(class_ids)[:4])}...; table: "
                           f"{', '.join(list(table.names)[:4])}...)")
    chosen_templates = {**table.templates, **(templates or {})}
    image_emb = image_embeddings(encoders, images, device, batch_size)
    label_t = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=image_emb.device)

    class_emb_cache: dict[str, tuple[list[int], torch.Tensor, list[str]]] = {}
    for lang in wanted:
        per_class = table.class_names(lang, class_ids)
        classes = sorted(per_class)
        lang_templates = list(LABEL_ONLY) if label_only else chosen_templates.get(
            lang, list(LABEL_ONLY))
        lists = [per_class[c][:1] if names == "first" else per_class[c] for c in classes]
        emb = (class_embeddings(encoders, lists, lang_templates, device, batch_size)
               if classes else torch.zeros(0, image_emb.shape[1], device=image_emb.device))
        class_emb_cache[lang] = (classes, emb, lang_templates)

    en_classes, en_emb, _ = class_emb_cache[english]
    en_full, _ = zero_shot_top1(image_emb, label_t, en_emb, en_classes)
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for lang in wanted:
        classes, emb, lang_templates = class_emb_cache[lang]
        if len(classes) < 2:
            skipped[lang] = f"{len(classes)} class(es) with names: nothing to classify"
            continue
        top1, count = zero_shot_top1(image_emb, label_t, emb, classes)
        if count == 0:
            skipped[lang] = "no evaluation image of its classes"
            continue
        shared = [c for c in classes if c in set(en_classes)]
        entry: dict[str, Any] = {"classes": len(classes), "images": count, "top1": top1,
                                 "chance": 1.0 / len(classes), "prompts": len(lang_templates),
                                 "shared_classes": len(shared)}
        if len(shared) >= 2:
            rows = [classes.index(c) for c in shared]
            en_rows = [en_classes.index(c) for c in shared]
            lang_shared, _ = zero_shot_top1(image_emb, label_t, emb[rows], shared)
            en_shared, _ = zero_shot_top1(image_emb, label_t, en_emb[en_rows], shared)
            entry.update(top1_on_shared=lang_shared, english_top1_on_shared=en_shared,
                         gap_to_english=lang_shared - en_shared)
        else:
            entry.update(top1_on_shared=None, english_top1_on_shared=None, gap_to_english=None)
        entry["gap_to_english_full"] = top1 - en_full
        results[lang] = entry
    return {"english": english, "english_top1": en_full, "languages": results,
            "skipped": skipped, "names": names, "label_only": label_only,
            "data_classes": len(class_ids), "table_classes_matched": len(matched),
            "table_classes_unmatched": len(table.names) - len(matched)}


def _autocast(device: torch.device) -> Any:
    import contextlib

    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -- the stand-in two-tower model --------------------------------------------------------------

PAD, UNK = 0, 1


def words(text: str) -> list[str]:
    """Lower-case word tokens (letters, digits, apostrophes); punctuation separates."""
    out, current = [], []
    for char in text.lower():
        if char.isalnum() or char == "'":
            current.append(char)
        elif current:
            out.append("".join(current))
            current = []
    if current:
        out.append("".join(current))
    return out


class WordTokenizer:
    """Word-level tokenizer of the stand-in: ids from a fixed vocabulary, ``UNK`` for any
    word it never saw in training, padded to ``context_length`` (open_clip's call shape:
    ``tokenizer(list_of_texts) -> LongTensor (B, context_length)``)."""

    def __init__(self, vocab: Sequence[str], context_length: int = 16) -> None:
        self.vocab = list(vocab)
        self.index = {word: i + 2 for i, word in enumerate(self.vocab)}
        self.context_length = context_length

    def __len__(self) -> int:
        return len(self.vocab) + 2

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        import torch

        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.context_length), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.index.get(w, UNK) for w in words(text)][: self.context_length] or [UNK]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


def standin_model(vocab_size: int, embed_dim: int = 64, backbone: str = "resnet20",
                  image_size: int = 32, text_width: int = 128) -> nn.Module:
    """A fresh :class:`StandInCLIP` (the class is made on first use: torch is imported lazily)."""
    return _standin_class()(vocab_size, embed_dim, backbone, image_size, text_width)


@functools.cache
def _standin_class() -> type:
    import torch
    from torch import nn

    class StandInCLIP(nn.Module):
        """STAND-IN two-tower model (not CLIP): a small CNN image tower (a hundred backbone +
        linear projection) and a bag-of-words text tower (mean of word embeddings + MLP), both
        into ``embed_dim``; a learnable temperature initialised as CLIP's (1/0.07)."""

        def __init__(self, vocab_size: int, embed_dim: int = 64, backbone: str = "resnet20",
                     image_size: int = 32, text_width: int = 128) -> None:
            super().__init__()
            from hundred.models import create_backbone

            self.backbone = create_backbone(backbone, img_size=image_size)
            self.image_proj = nn.Linear(int(self.backbone.feature_dim), embed_dim)
            self.token_embedding = nn.Embedding(vocab_size, text_width, padding_idx=PAD)
            self.text_mlp = nn.Sequential(nn.Linear(text_width, text_width), nn.GELU(),
                                          nn.Linear(text_width, embed_dim))
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

        def encode_image(self, x: torch.Tensor) -> torch.Tensor:
            return self.image_proj(self.backbone.forward_features(x))

        def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
            mask = (tokens != PAD).unsqueeze(-1).to(self.token_embedding.weight.dtype)
            pooled = (self.token_embedding(tokens) * mask).sum(1) / mask.sum(1).clamp_min(1)
            return self.text_mlp(pooled)

    return StandInCLIP


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
              labels: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric contrastive loss (Radford et al. 2021): cross-entropy of the scaled
    cosine similarities over images and over texts, pair i <-> i positive. With ``labels``,
    pairs of the same class are positives too (targets spread over them, as UniCL does):
    a dataset of few classes puts many same-class pairs in a batch, which plain CLIP would
    push apart; with all labels distinct this is exactly CLIP's loss."""
    import torch
    import torch.nn.functional as F

    scale = logit_scale.clamp(max=math.log(100)).exp()
    logits = scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    if labels is None:
        targets = torch.eye(len(logits), device=logits.device)
    else:
        targets = (labels[:, None] == labels[None, :]).float()
    per_image = -(targets / targets.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1)
    per_text = -(targets.T / targets.T.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1)
    return 0.5 * (per_image.mean() + per_text.mean())


def map_words(text: str, language: str) -> str:
    """The stand-in's pseudo-languages, deterministic word mappings of English:
    ``xx`` reverses each word and appends "o" ("red" -> "dero"); ``yy`` shifts each letter
    by 3 ("red" -> "uhg"). Punctuation and a template's ``{}`` are kept."""
    if language == "xx":
        def one(match: re.Match[str]) -> str:
            return match.group()[::-1] + "o"
    elif language == "yy":
        def one(match: re.Match[str]) -> str:
            return "".join(chr((ord(c) - 97 + 3) % 26 + 97) for c in match.group())
    else:
        raise HundredError(f"unknown stand-in language {language!r} (xx, yy)")
    return re.sub(r"[a-z]+", one, text.lower())


def standin_table(class_ids: Sequence[str], class_names: Sequence[str],
                  missing_every: int = 3) -> dict[str, Any]:
    """The STAND-IN's tiny pseudo-multilingual table (JSON-ready): ``en`` (synth100's names),
    ``xx`` (a word mapping the stand-in is trained on too, with every ``missing_every``-th
    class missing, as Babel-ImageNet's partial translations) and ``yy`` (a word mapping the
    stand-in never saw: its words are unknown, a 'language' the text tower cannot read)."""
    classes: dict[str, dict[str, list[str]]] = {}
    for k, (cid, name) in enumerate(zip(class_ids, class_names)):
        entry = {"en": [name], "yy": [map_words(name, "yy")]}
        if missing_every <= 0 or k % missing_every != missing_every - 1:
            entry["xx"] = [map_words(name, "xx")]
        classes[cid] = entry
    templates = {"en": list(STANDIN_TEMPLATES),
                 "xx": [map_words(t, "xx") for t in STANDIN_TEMPLATES],
                 "yy": [map_words(t, "yy") for t in STANDIN_TEMPLATES]}
    return {"stand_in": True, "note": "STAND-IN table: pseudo-languages made by word mappings "
            "of synth100's English class names (xx: reversed words + 'o', seen in training; "
            "yy: letters shifted by 3, never seen)", "classes": classes, "templates": templates}


@dataclass
class StandInSettings:
    """Training of the stand-in (defaults: a few epochs on CPU)."""

    epochs: int = 4
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    embed_dim: int = 64
    backbone: str = "resnet20"
    train_languages: tuple[str, ...] = ("en", "xx")
    seed: int = 0


def _standin_method(prompt_tokens: torch.Tensor, seed: int, config: Any) -> Any:
    """A hundred Method whose loss is CLIP's on (image, random prompt of its class) pairs, so
    the engine's Trainer trains the stand-in (no training loop of its own)."""
    import torch
    from hundred.engine.method import Method

    class StandInContrastive(Method):
        track, name = "generate", "babel-standin"

        def __init__(self) -> None:
            super().__init__(config=config)
            self.prompts = prompt_tokens  # (K, P, L): every training prompt of each class
            self.generator: torch.Generator | None = None

        def loss(self, model: nn.Module, images: Any, labels: torch.Tensor) -> torch.Tensor:
            prompts = self.prompts.to(labels.device)
            if self.generator is None or self.generator.device != labels.device:
                self.generator = torch.Generator(labels.device).manual_seed(seed)
            pick = torch.randint(prompts.shape[1], (len(labels),), device=labels.device,
                                 generator=self.generator)
            tokens = prompts[labels, pick]
            return clip_loss(model.encode_image(images), model.encode_text(tokens),
                             model.logit_scale, labels)

    return StandInContrastive()


def train_standin(data: str, out: str | Path, settings: StandInSettings,
                  overrides: Sequence[str] = (), device: str = "auto", force: bool = False,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the STAND-IN on ``data``'s train split (its class names are the texts) and write
    ``OUT/standin.safetensors``, ``OUT/standin.json`` and the stand-in table ``OUT/table.json``.
    Returns the metadata."""
    import torch
    from safetensors.torch import save_file

    from hundred.config import build_config
    from hundred.data import load_selection
    from hundred.data.loader import BatchLoader
    from hundred.engine.trainer import Trainer, resolve_device
    from hundred.io import write_json

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (force and (out / STANDIN_META).is_file()):
        raise HundredError(f"{out} exists and is not empty; choose another --out"
                           + ("" if force else " (or --force over an earlier stand-in)"))
    for lang in settings.train_languages:
        if lang not in (ENGLISH, "xx", "yy"):
            raise HundredError(f"stand-in training language {lang!r}: choose from en, xx, yy")
    base = [f"data.source={json.dumps(data)}", f"train.epochs={settings.epochs}",
            f"data.batch_size={settings.batch_size}", "optim.name=adamw",
            f"optim.lr={settings.lr}", f"optim.weight_decay={settings.weight_decay}",
            f"seed={settings.seed}", "train.eval_every=1000000", f"train.device={device}"]
    config = build_config(overrides=base + list(overrides))
    dataset = load_selection(config.data.source, config.data.classes, config.data.options)
    train = dataset.arrays("train")
    image_size = config.data.image_size or train.resolution[0]
    texts_per_class = []
    for name in dataset.class_names:
        texts = []
        for lang in settings.train_languages:
            templates = [t if lang == ENGLISH else map_words(t, lang) for t in STANDIN_TEMPLATES]
            label = name if lang == ENGLISH else map_words(name, lang)
            texts += prompt_texts([label], templates)
        texts_per_class.append(texts)
    vocab = sorted({w for texts in texts_per_class for t in texts for w in words(t)})
    tokenizer = WordTokenizer(vocab)
    prompt_tokens = torch.stack([tokenizer(texts) for texts in texts_per_class])
    torch.manual_seed(settings.seed)
    model = standin_model(len(tokenizer), settings.embed_dim, settings.backbone, image_size)
    torch_device = resolve_device(config.train.device)
    loader = BatchLoader(train, batch_size=min(config.data.batch_size, len(train)),
                         shuffle=True, drop_last=True, seed=config.seed, device=torch_device,
                         augment=config.data.augment, out_size=config.data.image_size,
                         mean=config.data.mean, std=config.data.std)
    method = _standin_method(prompt_tokens, settings.seed, config)
    start = time.perf_counter()
    trainer = Trainer(config, model, method, loader, None, torch_device, run_dir=None)
    result = trainer.fit()
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    model = trainer.model.cpu()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(out / STANDIN_WEIGHTS))
    meta = {"kind": STANDIN_KIND, "stand_in": True,
            "note": "STAND-IN two-tower model trained by hundred on synth100-style class names; "
                    "not CLIP, not multilingual",
            "vocab": vocab, "context_length": tokenizer.context_length,
            "embed_dim": settings.embed_dim, "backbone": settings.backbone,
            "image_size": image_size, "mean": list(config.data.mean),
            "std": list(config.data.std), "train_languages": list(settings.train_languages),
            "templates": list(STANDIN_TEMPLATES), "epochs": settings.epochs,
            "batch_size": settings.batch_size, "lr": settings.lr, "seed": settings.seed,
            "data": str(data), "data_options": config.data.options,
            "classes": dataset.num_classes, "train_seconds": round(seconds, 2),
            "final_train_loss": (result.history[-1]["train_loss"] if result.history else None)}
    write_json(out / STANDIN_META, meta)
    write_json(out / "table.json", standin_table(dataset.class_ids, dataset.class_names))
    log(f"stand-in trained in {seconds:.1f}s (final loss {meta['final_train_loss']:.3f}); "
        f"wrote {out / STANDIN_WEIGHTS}, {out / STANDIN_META}, {out / 'table.json'}")
    return meta


def load_standin(directory: str | Path, device: torch.device) -> Encoders:
    """The stand-in written by :func:`train_standin` (safetensors weights, JSON metadata)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path, weights_path = directory / STANDIN_META, directory / STANDIN_WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        raise HundredError(f"{directory} holds no stand-in ({STANDIN_META} and "
                           f"{STANDIN_WEIGHTS}); train one: hundred babel train-standin")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("kind") != STANDIN_KIND:
        raise HundredError(f"{meta_path} is not a {STANDIN_KIND} stand-in")
    tokenizer = WordTokenizer(meta["vocab"], meta["context_length"])
    model = standin_model(len(tokenizer), meta["embed_dim"], meta["backbone"],
                          meta["image_size"])
    try:
        model.load_state_dict(load_file(str(weights_path)))
    except RuntimeError as error:
        raise HundredError(f"{weights_path} does not fit its {STANDIN_META}: "
                           f"{str(error).splitlines()[0][:200]}") from None
    model.to(device).eval()
    return Encoders(model=model, tokenizer=tokenizer,
                    preprocess=_normalise_images(meta["mean"], meta["std"], meta["image_size"]),
                    name=f"stand-in:{directory}", stand_in=True)


# -- reports ---------------------------------------------------------------------------------

def _pct(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{100 * value:.1f}"


def _gap(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:+.1f}"


def markdown_report(result: dict[str, Any]) -> str:
    """A markdown table: one row per language (top-1 and gaps in percentage points)."""
    lines = [f"# Babel-ImageNet zero-shot classification: {result['model']}", ""]
    if result.get("stand_in"):
        lines += ["**STAND-IN**: a tiny two-tower model hundred trained itself and a "
                  "pseudo-multilingual table; these numbers exercise the harness and say "
                  "nothing about CLIP models or real languages.", ""]
    lines += [f"Data: {result['data']} ({result['images']} {result['split']} images, "
              f"{result['data_classes']} classes; {result['table_classes_matched']} of them in "
              f"the table). Names: {result['names']}. English reference: {result['english']}.",
              "", "| language | classes | images | prompts | top-1 % | chance % | "
              "gap to English (same classes), pp | gap to English (all its classes), pp |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for lang, entry in result["languages"].items():
        lines.append(f"| {lang} | {entry['classes']} | {entry['images']} | {entry['prompts']} | "
                     f"{_pct(entry['top1'])} | {_pct(entry['chance'])} | "
                     f"{_gap(entry['gap_to_english'])} | {_gap(entry['gap_to_english_full'])} |")
    for lang, reason in result.get("skipped", {}).items():
        lines.append(f"| {lang} | — | — | — | skipped: {reason} | | | |")
    return "\n".join(lines) + "\n"


def run_eval(model: str, table_path: str | Path, data: str, out: str | Path,
             weights: str | Path | None = None, model_config: str | Path | None = None,
             overrides: Sequence[str] = (), languages: Sequence[str] | None = None,
             english: str = ENGLISH, names: str = "first",
             templates_path: str | Path | None = None, label_only: bool = False,
             split: str = "val", device: str = "auto", batch_size: int = 256,
             force: bool = False, class_index: str | Path | None = None) -> dict[str, Any]:
    """Evaluate ``model`` (a stand-in directory or ``open_clip:NAME`` with ``weights``) on
    ``data``'s ``split`` for every table language; write ``OUT/babel.json`` and
    ``OUT/babel.md``. All inputs are checked before anything is written."""
    from hundred.config import build_config
    from hundred.data import load_selection
    from hundred.engine.trainer import resolve_device
    from hundred.io import write_json, write_text

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HundredError(f"--out {out} is a file")
    if out.exists() and (out / "babel.json").exists() and not force:
        raise HundredError(f"{out / 'babel.json'} exists; choose another --out or pass --force")
    if names not in ("first", "all"):
        raise HundredError(f"--names must be first or all, got {names!r}")
    table = load_table(table_path, load_class_index(class_index) if class_index else None)
    templates = load_templates(templates_path) if templates_path else None
    config = build_config(overrides=[f"data.source={json.dumps(data)}"] + list(overrides))
    torch_device = resolve_device(device)
    if model.startswith("open_clip:"):
        encoders = load_open_clip(model.split(":", 1)[1], weights, torch_device, model_config)
    else:
        if weights is not None:
            raise HundredError("--weights is for open_clip models; a stand-in directory holds "
                               "its own weights")
        encoders = load_standin(model, torch_device)
    dataset = load_selection(config.data.source, config.data.classes, config.data.options)
    arrays = dataset.arrays(split)
    start = time.perf_counter()
    result = evaluate_languages(encoders, dataset.class_ids, arrays.images, arrays.labels, table,
                                torch_device, languages, english, names, templates, label_only,
                                batch_size)
    stand_in = encoders.stand_in or table.stand_in
    result = {"paper": "Geigle, Timofte, Glavaš: Babel-ImageNet (ACL 2024, arXiv 2306.08658)",
              "model": encoders.name, "stand_in": stand_in, "table": str(table_path),
              "data": str(data), "split": split, "images": int(len(arrays.labels)),
              "seconds": round(time.perf_counter() - start, 2), **result}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "babel.json", result)
    write_text(out / "babel.md", markdown_report(result))
    return result


# -- command line ------------------------------------------------------------------------------

def add_babel_command(commands: Any) -> None:
    """Add ``hundred babel ...`` (train-standin, eval) to the ``hundred`` sub-parser group."""
    babel = commands.add_parser(
        "babel", help="Babel-ImageNet: multilingual zero-shot classification of CLIP-style "
        "encoders (accuracy per language, gap to English)")
    tools = babel.add_subparsers(dest="babel_command", required=True)

    train = tools.add_parser(
        "train-standin", help="train the STAND-IN two-tower model on a dataset's class names "
        "and write it with a pseudo-multilingual table",
        description="Train a tiny image tower + bag-of-words text tower with CLIP's contrastive "
        "loss on (image, prompt with its class name) pairs (synth100's names are descriptive). "
        "Writes OUT/standin.safetensors, OUT/standin.json and OUT/table.json (languages en, "
        "xx: a word mapping seen in training with every 3rd class missing, yy: an unseen one).")
    train.add_argument("--data", default="synth100", help="source spec or packed directory")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="config override, e.g. data.options={classes: 10, res: 16}")
    train.add_argument("--epochs", type=int, default=4)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate")
    train.add_argument("--embed-dim", type=int, default=64)
    train.add_argument("--backbone", default="resnet20", help="image tower (a hundred model)")
    train.add_argument("--languages", default="en,xx",
                       help="pseudo-languages trained on (en, xx, yy; default en,xx)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto")
    train.add_argument("--force", action="store_true", help="overwrite an earlier stand-in")
    train.add_argument("--out", required=True)
    train.set_defaults(func=_cmd_train_standin)

    evaluate = tools.add_parser(
        "eval", help="zero-shot top-1 per language and gap to English; writes babel.json and "
        "babel.md",
        description="Evaluate an encoder pair on a dataset's val split for every language of a "
        "translation table (JSON {classes: {ID: {LANG: [names]}}, templates: {LANG: [...]}} or "
        "TSV ID<TAB>LANG<TAB>NAME...). Each language is scored on the classes it has names for.")
    evaluate.add_argument("--model", required=True,
                          help="a stand-in directory (train-standin) or open_clip:NAME")
    evaluate.add_argument("--weights", default=None,
                          help="local open_clip checkpoint file (nothing is downloaded)")
    evaluate.add_argument("--model-config", default=None,
                          help="JSON architecture for open_clip (embed_dim, vision_cfg, "
                          "text_cfg), registered under the file's stem")
    evaluate.add_argument("--table", required=True, help="translation table (.json or .tsv)")
    evaluate.add_argument("--class-index", default=None,
                          help="for the Babel-ImageNet release's JSON (language -> [class "
                          "indices, labels]): class ids in index order, one per line")
    evaluate.add_argument("--templates", default=None,
                          help="JSON {LANG: [templates with {}]} overriding the table's")
    evaluate.add_argument("--label-only", action="store_true",
                          help="the bare class name as the only prompt (the paper's 'label')")
    evaluate.add_argument("--names", choices=("first", "all"), default="first",
                          help="first name per class (paper) or ensemble all names")
    evaluate.add_argument("--languages", default=None, help="comma-separated (default: all)")
    evaluate.add_argument("--english", default=ENGLISH, help="reference language code")
    evaluate.add_argument("--data", required=True, help="packed directory or source spec")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="data overrides, e.g. data.options={classes: 10, res: 16}")
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument("--batch-size", type=int, default=256)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--force", action="store_true")
    evaluate.add_argument("--out", required=True)
    evaluate.set_defaults(func=_cmd_eval)


def _cmd_train_standin(args: argparse.Namespace) -> None:
    from rich.console import Console

    console = Console()
    settings = StandInSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               embed_dim=args.embed_dim, backbone=args.backbone,
                               train_languages=tuple(x.strip() for x in args.languages.split(",")
                                                     if x.strip()), seed=args.seed)
    train_standin(args.data, args.out, settings, args.set, args.device, args.force,
                  log=lambda line: console.print(line, highlight=False, soft_wrap=True))


def _cmd_eval(args: argparse.Namespace) -> None:
    from rich.console import Console

    languages = [x.strip() for x in args.languages.split(",") if x.strip()] \
        if args.languages else None
    result = run_eval(args.model, args.table, args.data, args.out, args.weights,
                      args.model_config, args.set, languages, args.english, args.names,
                      args.templates, args.label_only, args.split, args.device,
                      args.batch_size, args.force, args.class_index)
    console = Console()
    console.print(markdown_report(result), highlight=False, soft_wrap=True)
    console.print(f"wrote {Path(args.out) / 'babel.json'} and {Path(args.out) / 'babel.md'}",
                  highlight=False)
