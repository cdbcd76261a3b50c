"""3D-DST end to end on a STAND-IN: the real diffusers classes (UNet2DConditionModel,
ControlNetModel, AutoencoderKL, CLIPTextModel + CLIPTokenizer) built from tiny configs with
random weights and saved as local folders, exactly as a user's Stable Diffusion / ControlNet
folders are read. The images are noise-like; what is checked is the pipeline: meshes ->
poses -> offscreen render -> Canny edges -> ControlNet -> packed data with pose annotations
that classify trains on; determinism; bad input writes nothing."""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch

from hundred.errors import HundredError
from hundred.tracks.generate import dst3d
from hundred.tracks.generate.dst3d import (MeshRenderer, add_dst3d_command, camera_pose,
                                           dst3d_pack, edge_map, load_mesh, load_poses,
                                           plan_split, check_settings, find_meshes,
                                           read_prompts)

PROMPTS = "tall_box: ['a tall {class}', 'a thin {class}']\n"
TINY = {"train_per_class": 3, "val_per_class": 1, "res": 16, "gen_res": 32, "steps": 2,
        "batch_size": 2}


def _renderer_or_skip(size: int = 32) -> MeshRenderer:
    try:
        return MeshRenderer(size, 49.1)
    except HundredError as error:
        pytest.skip(f"no offscreen OpenGL here (pyrender): {error}")


@pytest.fixture(scope="module")
def meshes(tmp_path_factory) -> Path:
    """Two classes: a cube (.obj) and a 'tall box' with two meshes (.ply, .off)."""
    import trimesh

    root = tmp_path_factory.mktemp("meshes")
    (root / "cube").mkdir()
    trimesh.creation.box().export(root / "cube" / "box.obj")
    (root / "tall_box").mkdir()
    trimesh.creation.box(extents=(0.4, 1.0, 0.4)).export(root / "tall_box" / "a.ply")
    trimesh.creation.cone(radius=0.5, height=1.0, sections=6).export(root / "tall_box" / "b.off")
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, Path]:
    """Tiny random Stable Diffusion + ControlNet folders (stand-ins for the real weights)."""
    from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler,
                           StableDiffusionPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("weights")
    letters = list(string.ascii_lowercase)
    vocab = ["<|startoftext|>", "<|endoftext|>"] + letters + [c + "</w>" for c in letters]
    (root / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"),
                              model_max_length=77)
    torch.manual_seed(0)
    blocks = {"block_out_channels": (4, 8), "layers_per_block": 1, "in_channels": 4,
              "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
              "cross_attention_dim": 8, "norm_num_groups": 1, "attention_head_dim": 2}
    unet = UNet2DConditionModel(sample_size=16, out_channels=4,
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **blocks)
    controlnet = ControlNetModel(conditioning_embedding_out_channels=(4, 8), **blocks)
    vae = AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4,
                        norm_num_groups=2)
    text = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=8, intermediate_size=16,
        num_attention_heads=2, num_hidden_layers=1, vocab_size=len(vocab),
        max_position_embeddings=77))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                            scheduler=scheduler, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(root / "sd")
    controlnet.save_pretrained(root / "controlnet")
    return root / "sd", root / "controlnet"


@pytest.fixture(scope="module")
def generated(meshes, weights, tmp_path_factory) -> tuple[Path, list, list]:
    """One tiny 3D-DST pack, with every (mesh, pose) the renderer was asked for and every
    (edge maps, prompts) the ControlNet got."""
    _renderer_or_skip().close()
    renders: list = []
    conditions: list = []
    render, generate = MeshRenderer.render, dst3d.generate

    def render_spy(self, key, parts, pose):
        renders.append((key, tuple(float(v) for v in pose)))
        return render(self, key, parts, pose)

    def generate_spy(pipe, edges, prompts, seeds, settings):
        conditions.append((edges, prompts))
        return generate(pipe, edges, prompts, seeds, settings)

    root = tmp_path_factory.mktemp("out")
    (root / "prompts.yaml").write_text(PROMPTS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MeshRenderer, "render", render_spy)
        patch.setattr(dst3d, "generate", generate_spy)
        dst3d_pack(meshes, root / "dst", sd=weights[0], controlnet=weights[1], device="cpu",
                   prompts=root / "prompts.yaml", quiet=True, **TINY)
    return root / "dst", renders, conditions


def test_the_pack_holds_images_labels_and_poses_of_every_split(generated):
    from hundred.data import load

    out, *_ = generated
    dataset = load(str(out))
    assert dataset.class_ids == ["cube", "tall_box"]
    assert dataset.class_names == ["cube", "tall box"]
    train, val = dataset.arrays("train"), dataset.arrays("val")
    assert train.images.shape == (6, 16, 16, 3) and train.images.dtype == np.uint8
    assert val.images.shape == (2, 16, 16, 3)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and val.labels.tolist() == [0, 1]
    meta = json.loads((out / "meta.json").read_text())
    record = meta["dst3d"]
    assert record["pose_columns"] == ["azimuth", "elevation", "theta", "distance"]
    assert record["meshes"] == ["cube/box.obj", "tall_box/a.ply", "tall_box/b.off"]
    poses = load_poses(out, "train")
    assert poses.shape == (6, 4)
    assert ((0 <= poses[:, 0]) & (poses[:, 0] < 360)).all()
    assert ((-90 <= poses[:, 1]) & (poses[:, 1] <= 90)).all()
    assert (poses[:, 2] == 0).all()  # the official renderer's roll is 0
    assert ((1 <= poses[:, 3]) & (poses[:, 3] <= 3)).all()
    # images of a class are spread over its meshes: tall_box's 3 over a.ply (2) and b.off (1)
    assert np.load(out / "train_meshes.npy").tolist() == [0, 0, 0, 1, 1, 2]
    readable = json.loads((out / "poses.json").read_text())
    assert [row["azimuth"] for row in readable["train"]] == poses[:, 0].tolist()
    assert readable["train"][3]["mesh"] == "tall_box/a.ply"
    assert readable["train"][0]["prompt"] == "a photo of a cube"
    assert readable["train"][4]["prompt"] == "a thin tall box"
    assert readable["val"][1]["class"] == "tall_box"


def test_the_stored_poses_are_the_rendered_ones(generated):
    out, calls, _ = generated
    stored = [(int(mesh), tuple(pose)) for split in ("train", "val") for mesh, pose in
              zip(np.load(out / f"{split}_meshes.npy"), load_poses(out, split).tolist())]
    assert [(key, pose) for key, pose in calls] == stored


def test_the_same_seed_gives_the_same_images(generated, meshes, weights, tmp_path):
    out, *_ = generated
    (tmp_path / "prompts.yaml").write_text(PROMPTS)
    dst3d_pack(meshes, tmp_path / "again", sd=weights[0], controlnet=weights[1], device="cpu",
               prompts=tmp_path / "prompts.yaml", quiet=True,
               **{**TINY, "batch_size": 3})  # per-image seeds: the batch size does not matter
    for name in ("train_images.npy", "val_images.npy", "train_poses.npy", "val_poses.npy"):
        assert np.array_equal(np.load(out / name), np.load(tmp_path / "again" / name)), name


def test_the_controlnet_gets_the_canny_edges_of_the_rendering_and_the_class_prompt(
        generated, meshes):
    out, _, conditions = generated
    prompts = [prompt for _, batch in conditions for prompt in batch]
    assert prompts == ["a photo of a cube"] * 3 + ["a tall tall box", "a thin tall box",
                                                   "a tall tall box"] + \
        ["a photo of a cube", "a tall tall box"]  # train, then val
    poses = load_poses(out)
    renderer = MeshRenderer(32, check_settings().fov)
    try:
        expected = edge_map(renderer.render(0, load_mesh(meshes / "cube" / "box.obj"),
                                            poses[0]))
    finally:
        renderer.close()
    edges = conditions[0][0]
    assert len(edges) == TINY["batch_size"] and edges[0].shape == (32, 32)
    assert np.array_equal(edges[0], expected) and edges[0].any()


def test_classify_erm_trains_on_the_generated_data(generated, tmp_path):
    from hundred.cli import main

    out, *_ = generated
    assert main(["run", "classify", "erm", "--data", str(out), "--device", "cpu",
                 "--root", str(tmp_path), "--set", "model.name=convnet_d3",
                 "--set", "data.batch_size=4", "--set", "train.epochs=1",
                 "--set", "quiet=true", "--set", "name=dst"]) == 0
    summary = json.loads((tmp_path / "classify" / "erm" / "dst" / "summary.json").read_text())
    assert summary["data"] == json.loads((out / "meta.json").read_text())["name"]
    assert 0 <= summary["val_top1"] <= 100


# ---------------------------------------------------------------------------- renderer


def test_a_rendered_cube_has_edges_that_move_with_the_pose(meshes):
    renderer = _renderer_or_skip(48)
    parts = load_mesh(meshes / "cube" / "box.obj")
    try:
        first = edge_map(renderer.render("cube", parts, (30.0, 20.0, 0.0, 2.0)))
        same = edge_map(renderer.render("cube", parts, (30.0, 20.0, 0.0, 2.0)))
        turned = edge_map(renderer.render("cube", parts, (75.0, 20.0, 0.0, 2.0)))
        rolled = edge_map(renderer.render("cube", parts, (30.0, 20.0, 40.0, 2.0)))
        far = edge_map(renderer.render("cube", parts, (30.0, 20.0, 0.0, 3.0)))
    finally:
        renderer.close()
    assert first.shape == (48, 48) and set(np.unique(first)) == {0, 255}
    assert np.array_equal(first, same)
    for other in (turned, rolled, far):
        assert not np.array_equal(first, other)
    assert (far > 0).sum() < (first > 0).sum()  # farther away: a smaller outline


def test_the_creases_between_faces_are_edges_not_only_the_outline(meshes):
    renderer = _renderer_or_skip(96)
    try:
        rendering = renderer.render("cube", load_mesh(meshes / "cube" / "box.obj"),
                                    (30.0, 30.0, 0.0, 2.5))  # three faces in view
    finally:
        renderer.close()
    edges = edge_map(rendering) > 0
    silhouette = np.repeat((rendering.max(axis=2) > 0)[..., None] * 255, 3, axis=2)
    outline = edge_map(silhouette.astype(np.uint8)) > 0
    assert edges.sum() > 1.3 * outline.sum()  # the three inner creases add to the outline


def test_camera_pose_looks_at_the_object_from_the_annotated_direction():
    matrix = camera_pose(90.0, 0.0, 0.0, 2.0)
    assert np.allclose(matrix[:3, 3], [2.0, 0.0, 0.0])  # azimuth 90: on the +X side
    assert np.allclose(matrix[:3, 2], [1.0, 0.0, 0.0])  # looking along -Z = toward origin
    assert np.allclose(matrix[:3, 1], [0.0, 1.0, 0.0])  # +Y up
    top = camera_pose(0.0, 90.0, 0.0, 1.5)
    assert np.allclose(top[:3, 3], [0.0, 1.5, 0.0]) and np.isfinite(top).all()
    for matrix in (camera_pose(33.0, -40.0, 25.0, 1.2), top):
        assert np.allclose(matrix[:3, :3].T @ matrix[:3, :3], np.eye(3))
    rolled = camera_pose(90.0, 0.0, 90.0, 2.0)
    assert np.allclose(rolled[:3, 2], [1.0, 0.0, 0.0])  # roll keeps the viewing axis


def test_poses_follow_the_settings(meshes):
    classes = find_meshes(meshes)
    read_prompts(None, classes, "a photo of a {class}")
    settings = check_settings(train_per_class=400, theta_std=10.0, elevation_std=0.0,
                              elevation_mean=15.0, distance_std=0.0, distance=2.0)
    plan = plan_split("train", classes, 400, settings)
    assert np.allclose(plan.poses[:, 1], 15.0) and np.allclose(plan.poses[:, 3], 2.0)
    assert 5 < plan.poses[:, 2].std() < 15 and abs(plan.poses[:, 2].mean()) < 2
    assert plan.poses[:, 0].min() < 30 and plan.poses[:, 0].max() > 330
    assert len(set(plan.seeds)) == len(plan.seeds)
    val = plan_split("val", classes, 400, settings)
    assert not np.array_equal(val.poses, plan.poses)


# --------------------------------------------------------------------------- bad input


def _nothing_written(tmp_path: Path) -> bool:
    return not any(p.name.startswith("out") for p in tmp_path.iterdir())


@pytest.mark.parametrize("which", ["sd", "controlnet"])
def test_missing_weights_are_an_error_before_anything_is_written(meshes, weights, tmp_path,
                                                                  which):
    paths = {"sd": weights[0], "controlnet": weights[1], which: tmp_path / "nowhere"}
    with pytest.raises(HundredError, match=f"--{which} .*does not exist"):
        dst3d_pack(meshes, tmp_path / "out", device="cpu", quiet=True, **paths, **TINY)
    assert _nothing_written(tmp_path)
    paths[which] = tmp_path  # a folder, but not a diffusers one
    with pytest.raises(HundredError, match=f"--{which} .* has no"):
        dst3d_pack(meshes, tmp_path / "out", device="cpu", quiet=True, **paths, **TINY)
    assert _nothing_written(tmp_path)


@pytest.mark.parametrize("settings, message", [
    ({"steps": 0}, "steps"), ({"guidance": -1.0}, "guidance"), ({"gen_res": 36}, "multiple"),
    ({"canny_low": 250}, "canny_low"), ({"prompt_template": "a cat"}, "{class}"),
    ({"nope": 1}, "nope"), ({"res": 2}, "res")])
def test_bad_settings_are_an_error_before_anything_is_written(meshes, weights, tmp_path,
                                                               settings, message):
    with pytest.raises(HundredError, match=message):
        dst3d_pack(meshes, tmp_path / "out", sd=weights[0], controlnet=weights[1],
                   device="cpu", quiet=True, **{**TINY, **settings})
    assert _nothing_written(tmp_path)


def test_bad_meshes_and_prompts_are_errors_before_anything_is_written(meshes, weights,
                                                                      tmp_path):
    common = {"sd": weights[0], "controlnet": weights[1], "device": "cpu", "quiet": True,
              **TINY}
    with pytest.raises(HundredError, match="not a directory"):
        dst3d_pack(tmp_path / "none", tmp_path / "out", **common)
    (tmp_path / "m" / "empty").mkdir(parents=True)
    with pytest.raises(HundredError, match="holds no mesh file"):
        dst3d_pack(tmp_path / "m", tmp_path / "out", **common)
    (tmp_path / "m" / "empty" / "broken.obj").write_text("this is not a mesh\n")
    with pytest.raises(HundredError, match="broken.obj"):
        dst3d_pack(tmp_path / "m", tmp_path / "out", **common)
    (tmp_path / "p.json").write_text(json.dumps({"dog": "a dog"}))
    with pytest.raises(HundredError, match="without a mesh folder: dog"):
        dst3d_pack(meshes, tmp_path / "out", prompts=tmp_path / "p.json", **common)
    with pytest.raises(HundredError, match="does not exist"):
        dst3d_pack(meshes, tmp_path / "out", prompts=tmp_path / "q.json", **common)
    assert _nothing_written(tmp_path)


def test_the_command_line_and_another_seed(generated, meshes, weights, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    data = parser.add_subparsers(dest="data_command", required=True)
    add_dst3d_command(data)
    out, *_ = generated
    (tmp_path / "prompts.yaml").write_text(PROMPTS)
    command = ["dst3d", str(meshes), "--sd", str(weights[0]), "--controlnet", str(weights[1]),
               "--out", str(tmp_path / "c"), "--prompts", str(tmp_path / "prompts.yaml"),
               "--train-per-class", "3", "--val-per-class", "1", "--res", "16",
               "--gen-res", "32", "--steps", "2", "--batch-size", "2", "--device", "cpu"]
    parser.parse_args(command).func(parser.parse_args(command))
    assert "2 classes (train 6, val 2) at 16px" in capsys.readouterr().out
    assert np.array_equal(np.load(out / "train_images.npy"),
                          np.load(tmp_path / "c" / "train_images.npy"))
    other = command + ["--seed", "1", "-o", "theta_std=20", "-o", "added_prompt=",
                       "-o", "negative_prompt={ugly}, blurry"]
    with pytest.raises(HundredError, match="--force"):
        parser.parse_args(other).func(parser.parse_args(other))
    parser.parse_args(other + ["--replace"]).func(parser.parse_args(other + ["--replace"]))
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    settings = meta["dst3d"]["settings"]
    assert settings["theta_std"] == 20 and settings["seed"] == 1
    assert settings["added_prompt"] == "" and settings["negative_prompt"] == "{ugly}, blurry"
    poses = load_poses(tmp_path / "c")
    assert (poses[:, 2] != 0).all()
    assert not np.array_equal(poses[:, 0], np.load(out / "train_poses.npy")[:, 0])
    assert not np.array_equal(np.load(out / "train_images.npy"),
                              np.load(tmp_path / "c" / "train_images.npy"))
