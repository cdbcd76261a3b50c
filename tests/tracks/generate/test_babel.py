"""Babel-ImageNet harness (Geigle et al., ACL 2024), tiny: prompt-ensembled class embeddings
are renormalised means of normalised prompt embeddings; a language is scored only on the
classes it has names for (and their images); English's gap to itself is 0 and a language
identical to English scores the same; the STAND-IN two-tower model beats chance after a few
steps; open_clip models load from a local file only (a tiny config with random weights runs
through the harness); bad input is a HundredError and writes nothing."""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hundred.errors import HundredError
from hundred.tracks.generate.babel import (Encoders, TranslationTable, add_babel_command,
                                           class_embeddings, clip_loss, evaluate_languages,
                                           load_open_clip, load_table, map_words, run_eval,
                                           standin_table)

TINY = "data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 8}"
CPU = torch.device("cpu")
DIM = 6


class VectorModel(nn.Module):
    """A mock with open_clip's interface: an image 'embeds' to its flattened pixels; a text
    (token = its index in ``texts``) to a fixed vector, given or drawn from its hash."""

    def __init__(self, vectors: dict[str, list[float]] | None = None) -> None:
        super().__init__()
        self.vectors = {k: torch.tensor(v, dtype=torch.float32) for k, v in (vectors or {}).items()}
        self.texts: list[str] = []

    def tokenizer(self, texts: list[str]) -> torch.Tensor:
        ids = []
        for text in texts:
            if text not in self.texts:
                self.texts.append(text)
            ids.append(self.texts.index(text))
        return torch.tensor(ids)[:, None]

    def vector(self, text: str) -> torch.Tensor:
        if text in self.vectors:
            return self.vectors[text]
        generator = torch.Generator().manual_seed(zlib.crc32(text.encode()))
        return torch.randn(DIM, generator=generator) * 3

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.vector(self.texts[int(i)]) for i in tokens[:, 0]])

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return x


def mock_encoders(vectors: dict[str, list[float]] | None = None) -> Encoders:
    model = VectorModel(vectors)
    return Encoders(model=model, tokenizer=model.tokenizer,
                    preprocess=lambda images: images.reshape(len(images), -1).float(),
                    name="mock")


def one_hot_images(labels: list[int]) -> np.ndarray:
    """uint8 (N, 1, 2, 3) 'images' whose 6 values are a one-hot of the label (+ a little)."""
    images = np.full((len(labels), 1, 2, 3), 1, dtype=np.uint8)
    flat = images.reshape(len(labels), -1)
    flat[np.arange(len(labels)), labels] = 100
    return images


def test_class_embedding_is_the_renormalised_mean_of_normalised_prompt_embeddings():
    encoders = mock_encoders()
    names = [["red disk", "crimson disk"], ["blue star"]]
    templates = ["a photo of a {}.", "{}"]
    got = class_embeddings(encoders, names, templates, CPU)
    assert torch.allclose(got.norm(dim=1), torch.ones(2), atol=1e-6)
    for k, class_names in enumerate(names):
        texts = [t.replace("{}", n) for n in class_names for t in templates]
        prompts = F.normalize(torch.stack([encoders.model.vector(t) for t in texts]), dim=-1)
        expected = F.normalize(prompts.mean(0), dim=0)
        assert torch.allclose(got[k], expected, atol=1e-6)
        # not the mean of unnormalised embeddings (the prompts have different norms)
        raw = torch.stack([encoders.model.vector(t) for t in texts])
        assert not torch.allclose(got[k], F.normalize(raw.mean(0), dim=0), atol=1e-4)


def _four_class_setup() -> tuple[Encoders, TranslationTable, np.ndarray, np.ndarray]:
    # every name points at its class's image direction; German has no name for class 3
    vectors = {f"c{k}": np.eye(DIM)[k].tolist() for k in range(4)}
    for k in range(3):
        vectors[f"k{k}"] = vectors[f"c{k}"]
    table = TranslationTable(names={f"s{k:03d}": {"en": [f"c{k}"]} for k in range(4)})
    for k in range(3):
        table.names[f"s{k:03d}"]["de"] = [f"k{k}"]
    labels = np.repeat(np.arange(4), 5)
    return mock_encoders(vectors), table, one_hot_images(labels.tolist()), labels


def test_each_language_is_scored_on_its_own_classes_and_their_images_only():
    encoders, table, images, labels = _four_class_setup()
    class_ids = [f"s{k:03d}" for k in range(4)]
    result = evaluate_languages(encoders, class_ids, images, labels, table, CPU)
    en, de = result["languages"]["en"], result["languages"]["de"]
    assert (en["classes"], en["images"]) == (4, 20)
    assert (de["classes"], de["images"]) == (3, 15)  # class 3 and its 5 images dropped
    # a 3-way problem on classes 0-2 only: scoring class 3's images (no candidate) would
    # cap it at 0.75
    assert de["top1"] == 1.0
    assert de["chance"] == pytest.approx(1 / 3)
    # like-for-like gap: English on German's three classes scores 1.0 as well
    assert de["shared_classes"] == 3 and de["gap_to_english"] == pytest.approx(0.0)
    assert de["gap_to_english_full"] == pytest.approx(de["top1"] - en["top1"])


def test_a_class_missing_in_a_language_is_no_candidate_there():
    # class 2's English name attracts class 0's images; the language without a name for
    # class 2 cannot make that mistake (class 2 is no candidate, its images are not scored)
    vectors = {"c0": (np.eye(DIM)[0] + np.eye(DIM)[3]).tolist(), "c1": np.eye(DIM)[1].tolist(),
               "c2": (2 * np.eye(DIM)[0] + np.eye(DIM)[2]).tolist()}
    vectors.update({"k0": vectors["c0"], "k1": vectors["c1"]})
    names = {"a": {"en": ["c0"], "de": ["k0"]}, "b": {"en": ["c1"], "de": ["k1"]},
             "c": {"en": ["c2"]}}
    labels = np.repeat(np.arange(3), 4)
    result = evaluate_languages(mock_encoders(vectors), ["a", "b", "c"],
                                one_hot_images(labels.tolist()), labels,
                                TranslationTable(names=names), CPU)
    assert result["languages"]["en"]["top1"] == pytest.approx(8 / 12)  # class 0 -> "c2"
    assert result["languages"]["de"]["top1"] == 1.0
    assert result["languages"]["de"]["images"] == 8


def test_english_gap_is_zero_and_a_copy_of_english_scores_the_same():
    encoders = mock_encoders()  # random text vectors: some accuracy, not 1
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(40, 1, 2, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(5), 8)
    names = {f"id{k}": {"en": [f"name {k}"], "copy": [f"name {k}"], "xx": [f"other {k}"]}
             for k in range(5)}
    table = TranslationTable(names=names, templates={"en": ["a {}."], "copy": ["a {}."]})
    result = evaluate_languages(encoders, list(names), images, labels, table, CPU)
    en, copy = result["languages"]["en"], result["languages"]["copy"]
    assert en["gap_to_english"] == 0.0 and en["gap_to_english_full"] == 0.0
    assert copy["top1"] == en["top1"] and copy["gap_to_english"] == 0.0
    assert result["languages"]["xx"]["prompts"] == 1  # no templates: the bare label
    with_all = evaluate_languages(encoders, list(names), images, labels, table, CPU, names="all")
    assert with_all["languages"] == result["languages"]  # one name per class: same thing


def test_tables_in_json_and_tsv_agree_and_bad_tables_are_refused(tmp_path: Path):
    json_path = tmp_path / "t.json"
    json_path.write_text(json.dumps({"classes": {"n01": {"en": ["tench", "fish"], "de": "Schleie"},
                                                 "n02": {"en": ["goldfish"], "de": []}},
                                     "templates": {"en": ["a photo of a {}."]}}))
    tsv_path = tmp_path / "t.tsv"
    tsv_path.write_text("class_id\tlanguage\tnames\nn01\ten\ttench\tfish\nn01\tde\tSchleie\n"
                        "n02\ten\tgoldfish\n# comment\n")
    a, b = load_table(json_path), load_table(tsv_path)
    assert a.names == b.names == {"n01": {"en": ["tench", "fish"], "de": ["Schleie"]},
                                  "n02": {"en": ["goldfish"]}}
    assert a.templates == {"en": ["a photo of a {}."]}
    assert a.class_names("de", ["n01", "n02"]) == {0: ["Schleie"]}
    # the Babel-ImageNet release's layout: language -> [ImageNet-1k indices, labels]
    release = tmp_path / "release.json"
    release.write_text(json.dumps({"EN": [[0, 1, 2], ["tench", "goldfish", "shark"]],
                                   "DE": [[0, 2], ["Schleie", "Hai"]]}))
    index = tmp_path / "LOC_synset_mapping.txt"
    index.write_text("n01 tench, Tinca tinca\nn02 goldfish\nn03 great white shark\n")
    from hundred.tracks.generate.babel import load_class_index

    mapped = load_table(release, load_class_index(index))
    assert mapped.names["n03"] == {"EN": ["shark"], "DE": ["Hai"]}
    assert mapped.class_names("DE", ["n01", "n02", "n03"]) == {0: ["Schleie"], 2: ["Hai"]}
    with pytest.raises(HundredError, match="--class-index"):
        load_table(release)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"classes": {"n01": {"en": ["x"]}}, "templates": {"en": ["no"]}}))
    with pytest.raises(HundredError, match="one '\\{\\}'"):
        load_table(bad)
    with pytest.raises(HundredError, match="does not exist"):
        load_table(tmp_path / "missing.json")
    bad.write_text("{not json")
    with pytest.raises(HundredError, match="not valid JSON"):
        load_table(bad)


def test_clip_loss_with_distinct_labels_is_clips_symmetric_cross_entropy():
    torch.manual_seed(0)
    image, text, scale = torch.randn(6, 8), torch.randn(6, 8), torch.tensor(2.0)
    logits = scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    target = torch.arange(6)
    clip = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert torch.allclose(clip_loss(image, text, scale), clip, atol=1e-5)
    assert torch.allclose(clip_loss(image, text, scale, torch.arange(6)), clip, atol=1e-5)


def test_standin_table_is_deterministic_with_missing_classes():
    table = standin_table(["a", "b", "c"], ["red disk on sky", "blue star on sand", "x y"])
    assert table["stand_in"] is True
    assert "xx" not in table["classes"]["c"] and "xx" in table["classes"]["a"]
    assert table["classes"]["a"]["xx"] == ["dero ksido noo ykso"]
    assert map_words("a photo of a {}.", "yy") == "d skrwr ri d {}."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_babel_command(parser.add_subparsers(dest="command"))
    return parser


def _cli(*argv: str) -> None:
    args = _parser().parse_args(list(argv))
    args.func(args)


def test_standin_trained_a_few_steps_beats_chance_through_the_cli(tmp_path: Path):
    model_dir, out = tmp_path / "standin", tmp_path / "eval"
    _cli("babel", "train-standin", "--data", "synth100", "--set", TINY, "--epochs", "4",
         "--batch-size", "16", "--device", "cpu", "--out", str(model_dir))
    _cli("babel", "eval", "--model", str(model_dir), "--table", str(model_dir / "table.json"),
         "--data", "synth100", "--set", TINY, "--device", "cpu", "--out", str(out))
    result = json.loads((out / "babel.json").read_text())
    assert result["stand_in"] is True and "STAND-IN" in (out / "babel.md").read_text()
    en, xx = result["languages"]["en"], result["languages"]["xx"]
    assert en["top1"] > en["chance"] + 0.15  # 4 classes: chance 0.25
    assert xx["classes"] == 3  # every third class has no xx name
    assert xx["top1"] > xx["chance"]  # xx was seen in training
    with pytest.raises(HundredError, match="exists"):  # no silent overwrite
        _cli("babel", "eval", "--model", str(model_dir), "--table",
             str(model_dir / "table.json"), "--data", "synth100", "--set", TINY,
             "--device", "cpu", "--out", str(out))


TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8,
                            "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                          "layers": 1}}


def test_missing_weights_is_a_clear_error_and_writes_nothing(tmp_path: Path):
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"s000": {"en": "a"}, "s001": {"en": "b"}}))
    out = tmp_path / "out"
    with pytest.raises(HundredError, match="does not exist"):
        run_eval("open_clip:ViT-B-32", table, "synth100", out, weights=tmp_path / "nope.pt",
                 overrides=[TINY], device="cpu")
    with pytest.raises(HundredError, match="--weights"):
        load_open_clip("ViT-B-32", None, CPU)
    with pytest.raises(HundredError, match="stand-in"):
        run_eval(str(tmp_path / "no-model"), table, "synth100", out, overrides=[TINY],
                 device="cpu")
    assert not out.exists()


def test_open_clip_model_from_a_tiny_config_and_local_file_runs_through_the_harness(
        tmp_path: Path):
    import open_clip
    from safetensors.torch import save_file

    config = tmp_path / "hundred-babel-tiny.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(1)
    reference = open_clip.create_model("hundred-babel-tiny")
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    encoders = load_open_clip("hundred-babel-tiny", weights, CPU, config)
    for key, value in reference.state_dict().items():  # the file's weights, not a fresh init
        assert torch.equal(encoders.model.state_dict()[key], value)
    table = tmp_path / "t.json"
    table.write_text(json.dumps(standin_table([f"s{k:03d}" for k in range(4)],
                                              ["red disk on sky", "blue star on sand",
                                               "green ring on dark", "pink cross on light"])))
    result = run_eval("open_clip:hundred-babel-tiny", table, "synth100", tmp_path / "e",
                      weights=weights, model_config=config, overrides=[TINY], device="cpu")
    assert set(result["languages"]) == {"en", "xx", "yy"}
    assert result["languages"]["en"]["images"] == 32 and result["model"].startswith("open_clip")
    bad = tmp_path / "bad.safetensors"
    save_file({"nothing": torch.zeros(1)}, str(bad))
    with pytest.raises(HundredError, match="cannot load"):
        load_open_clip("hundred-babel-tiny", bad, CPU)
