"""3D-DST: images with 3D pose annotations from rendered meshes and a ControlNet,
``hundred data dst3d``.

Ma, Liu, Wang, Wang, Yuan, Zhang, Xiao, Lu, Duan, Qi, Kortylewski, Liu & Yuille, "Generating
Images with 3D Annotations Using Diffusion Models" (3D Diffusion Style Transfer; ICLR 2024,
arXiv 2306.08103), Sec. 3. For every class, 3D meshes are rendered from sampled viewpoints
``(azimuth, elevation, theta, distance)``; the Canny edge map of each rendering is the visual
prompt of a ControlNet over Stable Diffusion, the class prompt its text prompt; the generated
image inherits the rendering's pose as its 3D annotation, for free. The result here is a
packed dataset (:mod:`hundred.data.pack`) that every track trains on (``hundred run classify
erm --data OUT``), plus the pose of every image:

* ``{split}_poses.npy`` float64 ``(N, 4)``: azimuth, elevation, theta (degrees) and distance
  (largest side of the object's bounding box = 1), checksummed in meta.json like the images;
* ``{split}_meshes.npy`` int64 ``(N,)``: which mesh (``meta["dst3d"]["meshes"]``) was drawn;
* ``poses.json``: the same per image, readable, with its class, mesh file, prompt and seed.

Pose convention (the mesh file's +Y is up, as in glTF and ShapeNet): the object is centred on
its bounding box and scaled so that the box's largest side is 1; the camera sits at
``distance * (cos(el) sin(az), sin(el), cos(el) cos(az))`` looking at the centre with +Y up
(azimuth 0: in front of the object's +Z face), then rolls by ``theta`` about its viewing
axis (counter-clockwise in the image). Elevation is the angle above the horizontal plane.

Defaults follow the official code (github.com/wufeim/DST3D, read, not copied) where the paper
is silent: poses as its renderer's default "all azimuths" strategy — azimuth uniform in
[0, 360), elevation a normal of mean 0 and std 30 degrees truncated to [-90, 90] (its polar
angle: mean 90, std 30, in [0, 180]), no in-plane rotation (its roll is fixed at 0), distance
a normal of mean 1.5 and std 0.5 truncated to [1, 3]; a 35 mm lens on a 32 mm sensor (49.1
degrees field of view); Canny thresholds 100/200 with aperture 3 on the 512 px rendering; DDIM
with 20 steps and eta = 1, classifier-free guidance 9, control strength 1; the prompt
``"<class prompt>, best quality, extremely detailed"`` and its negative prompt. The class
prompt is ``"a photo of a {class}"`` unless a prompts file gives one or several per class
(the paper's LLM-written prompts; image k of a class takes prompt k modulo their number).

Choices of this implementation, where the paper leaves them open: pyrender (OpenGL,
offscreen through EGL; mesa's llvmpipe on machines without a GPU) instead of Blender/Cycles;
a black background; a strong key and a weak fill light moving with the camera (see
``LIGHTS``: interior creases, not only outlines, pass Canny's thresholds); smooth shading
with creases sharper than 20 degrees kept (trimesh's ``smooth_shade``), so that flat faces
meet in visible edges and curved surfaces show no facets. Images of a class are spread over
its meshes as evenly as possible (the first ``N mod M`` meshes get one more, in file order).
Every image has its own seed (from ``seed``, its split and row), so an image does not depend
on the batch size. Generated at ``gen_res`` (512, Stable Diffusion's own size) and resized
to the pack's ``res`` (bicubic, as ``hundred data pack`` resizes). The train and val splits
use independent poses from the same meshes. Not implemented: the paper's K-fold consistency
filter (KCF) that drops failed generations, and its LLM prompt generation (give a prompts
file instead).

Weights are the user's local diffusers-format folders (``--sd``: a Stable Diffusion 1.x
pipeline folder with model_index.json; ``--controlnet``: a ControlNet folder with
config.json, e.g. lllyasviel/control_v11p_sd15_canny); nothing is downloaded
(``local_files_only``). Bad input (missing weights, meshes, prompts, settings, an existing
``--out``) raises :class:`~hundred.errors.HundredError` before anything is written; the pack
is built in ``OUT.partial-<pid>`` and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hundred.errors import HundredError

PAPER = ("Ma et al., Generating Images with 3D Annotations Using Diffusion Models (3D-DST), "
         "ICLR 2024 (arXiv 2306.08103)")
POSE_COLUMNS = ("azimuth", "elevation", "theta", "distance")
POSE_UNITS = ("degrees", "degrees", "degrees", "largest bounding-box side of the object")
POSE_CONVENTION = (
    "object centred on its bounding box, scaled to a largest side of 1, +Y of the mesh file "
    "up; camera at distance * (cos(el) sin(az), sin(el), cos(el) cos(az)) looking at the "
    "centre with +Y up (azimuth 0: in front of the +Z face; elevation: angle above the "
    "horizontal plane), then rolled by theta about its viewing axis (counter-clockwise in "
    "the image)")
MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply", ".off", ".stl")
SPLITS = ("train", "val")
SPLIT_STREAM = {"train": 1, "val": 2}  # independent random streams per split
POSES_JSON = "poses.json"
FOCAL_MM, SENSOR_MM = 35.0, 32.0  # the official renderer's camera
NEGATIVE_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, "
                   "fewer digits, cropped, worst quality, low quality")


# ------------------------------------------------------------------------------- settings


class Dst3dSettings(BaseModel):
    """What ``hundred data dst3d`` generates and how (the official code's defaults)."""

    model_config = ConfigDict(extra="forbid")

    train_per_class: int = Field(100, ge=1, description="generated train images per class")
    val_per_class: int = Field(20, ge=1, description="generated val images per class "
                               "(poses drawn independently of train's)")
    res: int = Field(64, ge=4, le=2048, description="side of the packed images (resized "
                     "from gen_res, bicubic)")
    gen_res: int = Field(512, ge=8, le=2048, description="side of the rendering, edge map and "
                         "generated image (paper: 512, Stable Diffusion 1.5's size); a "
                         "multiple of 8")
    steps: int = Field(20, ge=1, description="DDIM steps (official code: 20)")
    guidance: float = Field(9.0, ge=0, description="classifier-free guidance scale "
                            "(official code: 9)")
    eta: float = Field(1.0, ge=0, le=1, description="DDIM eta (official code: 1)")
    conditioning_scale: float = Field(1.0, ge=0, description="ControlNet strength: scale of "
                                      "its residuals (official code: 1)")
    canny_low: int = Field(100, ge=0, le=255, description="Canny lower threshold "
                           "(official code: 100)")
    canny_high: int = Field(200, ge=0, le=255, description="Canny upper threshold "
                            "(official code: 200)")
    prompt_template: str = Field("a photo of a {class}", description="class prompt for "
                                 "classes the prompts file does not name; {class} is the "
                                 "class name")
    added_prompt: str = Field("best quality, extremely detailed", description="appended to "
                              "every prompt after a comma (official code's a_prompt); empty: "
                              "nothing")
    negative_prompt: str = Field(NEGATIVE_PROMPT, description="negative prompt of guidance "
                                 "(official code's n_prompt)")
    azimuth_min: float = Field(0.0, description="azimuth range start, degrees (uniform)")
    azimuth_max: float = Field(360.0, description="azimuth range end, degrees (exclusive)")
    elevation_mean: float = Field(0.0, ge=-90, le=90, description="mean elevation, degrees")
    elevation_std: float = Field(30.0, ge=0, description="std of the elevation normal, "
                                 "degrees (official: 30); 0 = always the mean")
    elevation_min: float = Field(-90.0, ge=-90, le=90, description="lowest elevation")
    elevation_max: float = Field(90.0, ge=-90, le=90, description="highest elevation")
    theta_std: float = Field(0.0, ge=0, description="std of the in-plane rotation normal, "
                             "degrees, truncated to [-180, 180] (official renderer: 0)")
    distance: float = Field(1.5, gt=0, description="mean camera distance (official: 1.5)")
    distance_std: float = Field(0.5, ge=0, description="std of the distance normal "
                                "(official: 0.5); 0 = always the mean")
    distance_min: float = Field(1.0, gt=0, description="smallest distance (official: "
                                "mean - 0.5)")
    distance_max: float = Field(3.0, gt=0, description="largest distance (official: "
                                "mean + 1.5)")
    fov: float = Field(math.degrees(2 * math.atan(SENSOR_MM / 2 / FOCAL_MM)), gt=0, lt=180,
                       description="vertical field of view, degrees (official: a 35 mm lens "
                       "on a 32 mm sensor, 49.1)")
    seed: int = Field(0, ge=0, description="seed of poses and of every image's noise")
    batch_size: int = Field(4, ge=1, description="images per ControlNet call")

    @model_validator(mode="after")
    def _consistent(self) -> "Dst3dSettings":
        if self.gen_res % 8:
            raise ValueError(f"gen_res must be a multiple of 8, got {self.gen_res}")
        if self.canny_low > self.canny_high:
            raise ValueError("canny_low must not exceed canny_high")
        if not self.azimuth_min < self.azimuth_max:
            raise ValueError("azimuth_min must be below azimuth_max")
        if not self.elevation_min <= self.elevation_mean <= self.elevation_max:
            raise ValueError("need elevation_min <= elevation_mean <= elevation_max")
        if not self.distance_min <= self.distance <= self.distance_max:
            raise ValueError("need distance_min <= distance <= distance_max")
        if "{class}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {class}")
        return self


def check_settings(**settings: Any) -> Dst3dSettings:
    """:class:`Dst3dSettings` from keyword values; a :class:`HundredError` naming each bad one."""
    try:
        return Dst3dSettings(**settings)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'settings'}: "
            f"{str(item['msg']).removeprefix('Value error, ')}" for item in error.errors())
        raise HundredError(f"dst3d: {problems}") from None


# -------------------------------------------------------------------------- meshes, prompts


@dataclass
class MeshClass:
    """One class: its folder name (id), its name in prompts, its mesh files, its prompts."""

    class_id: str
    name: str
    files: list[Path]
    prompts: list[str] = field(default_factory=list)


def find_meshes(root: Path) -> list[MeshClass]:
    """The classes under ``root`` (one folder per class, sorted by name) with their mesh files
    (any depth, sorted); a :class:`HundredError` when there is none or a class has none."""
    if not root.is_dir():
        raise HundredError(f"{root} is not a directory: give a folder with one sub-folder of "
                           f"mesh files ({', '.join(MESH_SUFFIXES)}) per class")
    classes: list[MeshClass] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in folder.rglob("*") if p.is_file()
                       and p.suffix.lower() in MESH_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise HundredError(f"class folder {folder} holds no mesh file "
                               f"({', '.join(MESH_SUFFIXES)})")
        classes.append(MeshClass(folder.name, folder.name.replace("_", " "), files))
    if not classes:
        raise HundredError(f"{root} holds no class folders: give one sub-folder of mesh files "
                           f"({', '.join(MESH_SUFFIXES)}) per class")
    return classes


def read_prompts(path: Path | None, classes: list[MeshClass], template: str) -> None:
    """Fill each class's prompts: from ``path`` (JSON or YAML: class folder name -> a prompt
    or a list of prompts; ``{class}`` in them is replaced by the class name), else
    ``template``."""
    given: dict[str, Any] = {}
    if path is not None:
        import yaml

        if not path.is_file():
            raise HundredError(f"--prompts {path} does not exist (a JSON/YAML file: class "
                               f"folder name -> prompt or list of prompts)")
        try:
            given = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise HundredError(f"--prompts {path} is not JSON/YAML: {error}") from None
        if not isinstance(given, dict):
            raise HundredError(f"--prompts {path} must map class folder names to prompts")
        known = {mesh_class.class_id for mesh_class in classes}
        unknown = sorted(str(key) for key in given if str(key) not in known)
        if unknown:
            raise HundredError(f"--prompts {path} names classes without a mesh folder: "
                               f"{', '.join(unknown[:8])}")
    for mesh_class in classes:
        value = given.get(mesh_class.class_id, template)
        prompts = [value] if isinstance(value, str) else value
        if not isinstance(prompts, list) or not prompts \
                or not all(isinstance(item, str) and item.strip() for item in prompts):
            raise HundredError(f"--prompts {path}: {mesh_class.class_id} must have a prompt or "
                               f"a non-empty list of prompts")
        mesh_class.prompts = [item.replace("{class}", mesh_class.name) for item in prompts]


def check_weights(sd: Path | None, controlnet: Path | None) -> None:
    """HundredError unless both are local diffusers-format folders (nothing is downloaded)."""
    for flag, path, marker, what in (
            ("--sd", sd, "model_index.json", "a Stable Diffusion 1.x pipeline folder "
             "(save_pretrained; e.g. a local copy of stable-diffusion-v1-5)"),
            ("--controlnet", controlnet, "config.json", "a ControlNet folder (save_pretrained; "
             "e.g. a local copy of lllyasviel/control_v11p_sd15_canny)")):
        if path is None:
            raise HundredError(f"{flag} DIR is required: {what}; weights are never downloaded")
        if not path.exists():
            raise HundredError(f"{flag} {path} does not exist: give {what}")
        if not (path / marker).is_file():
            raise HundredError(f"{flag} {path} has no {marker}: not {what}")


# ---------------------------------------------------------------------------------- poses


def _truncated_normal(rng: np.random.Generator, n: int, mean: float, std: float,
                      low: float, high: float) -> np.ndarray:
    """``n`` draws of a normal truncated to ``[low, high]`` (rejection; std 0: the mean)."""
    if std == 0 or n == 0:
        return np.full(n, float(mean))
    values = rng.normal(mean, std, n)
    bad = (values < low) | (values > high)
    while bad.any():
        values[bad] = rng.normal(mean, std, int(bad.sum()))
        bad = (values < low) | (values > high)
    return values


def sample_poses(rng: np.random.Generator, n: int, settings: Dst3dSettings) -> np.ndarray:
    """``(n, 4)`` poses: azimuth uniform, elevation, theta and distance truncated normals."""
    azimuth = rng.uniform(settings.azimuth_min, settings.azimuth_max, n) % 360.0
    elevation = _truncated_normal(rng, n, settings.elevation_mean, settings.elevation_std,
                                  settings.elevation_min, settings.elevation_max)
    theta = _truncated_normal(rng, n, 0.0, settings.theta_std, -180.0, 180.0)
    distance = _truncated_normal(rng, n, settings.distance, settings.distance_std,
                                 settings.distance_min, settings.distance_max)
    return np.stack([azimuth, elevation, theta, distance], axis=1)


def camera_pose(azimuth: float, elevation: float, theta: float, distance: float) -> np.ndarray:
    """The 4x4 camera-to-world matrix of a pose (OpenGL camera: looks along -Z, +Y up)."""
    az, el, th = np.radians([azimuth, elevation, theta])
    eye = distance * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    back = eye / np.linalg.norm(eye)  # the camera's +Z points away from the object
    # straight above/below, "up" is undefined: take the direction azimuth points to instead
    up = np.array([0.0, 1.0, 0.0]) if abs(back[1]) < 1 - 1e-9 \
        else -np.sign(back[1]) * np.array([np.sin(az), 0.0, np.cos(az)])
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    upward = np.cross(back, right)
    roll = np.array([[np.cos(th), -np.sin(th), 0.0], [np.sin(th), np.cos(th), 0.0],
                     [0.0, 0.0, 1.0]])
    matrix = np.eye(4)
    matrix[:3, :3] = np.stack([right, upward, back], axis=1) @ roll
    matrix[:3, 3] = eye
    return matrix


@dataclass
class Plan:
    """What a split will hold, row by row (class-major, then mesh by mesh)."""

    labels: np.ndarray          # int64 (N,)
    meshes: np.ndarray          # int64 (N,): index into the flat mesh list
    poses: np.ndarray           # float64 (N, 4)
    prompts: list[str]
    seeds: list[int]


def plan_split(split: str, classes: list[MeshClass], per_class: int,
               settings: Dst3dSettings) -> Plan:
    """Rows of ``split``: ``per_class`` images per class spread over its meshes, poses and
    seeds from ``settings.seed`` and the split alone."""
    labels, meshes, prompts = [], [], []
    first_mesh = 0
    for label, mesh_class in enumerate(classes):
        count = len(mesh_class.files)
        shares = [per_class // count + (index < per_class % count) for index in range(count)]
        for index, share in enumerate(shares):
            labels += [label] * share
            meshes += [first_mesh + index] * share
        prompts += [mesh_class.prompts[k % len(mesh_class.prompts)] for k in range(per_class)]
        first_mesh += count
    stream = SPLIT_STREAM[split]
    poses = sample_poses(np.random.default_rng([settings.seed, stream, 0]), len(labels),
                         settings)
    seeds = np.random.SeedSequence([settings.seed, stream, 1]).generate_state(len(labels))
    return Plan(np.asarray(labels, dtype=np.int64), np.asarray(meshes, dtype=np.int64), poses,
                prompts, [int(seed) for seed in seeds])


# ------------------------------------------------------------------------------ rendering


def load_mesh(path: Path) -> list[Any]:
    """The triangle meshes of a file (a scene's, with its transforms applied), centred on
    their joint bounding box and scaled to a largest side of 1; HundredError when none."""
    import trimesh

    try:
        loaded = trimesh.load(path)
    except Exception as error:  # trimesh raises many kinds for a broken file
        raise HundredError(f"cannot read the mesh {path}: {error}") from None
    parts = loaded.dump(concatenate=False) if isinstance(loaded, trimesh.Scene) else [loaded]
    parts = [part for part in parts if isinstance(part, trimesh.Trimesh) and len(part.faces)]
    if not parts:
        raise HundredError(f"the mesh {path} holds no triangles")
    low = np.min([part.bounds[0] for part in parts], axis=0)
    high = np.max([part.bounds[1] for part in parts], axis=0)
    side = float(np.max(high - low))
    if not side > 0:
        raise HundredError(f"the mesh {path} is flat or a point (bounding box {low}..{high})")
    transform = np.eye(4)
    transform[:3, :3] /= side
    transform[:3, 3] = -(low + high) / 2 / side
    for part in parts:
        part.apply_transform(transform)
    return parts


def _ensure_gl_platform() -> None:
    """Offscreen OpenGL without a display: EGL (a GPU's, or mesa's llvmpipe on CPUs), unless
    the user chose a platform (PYOPENGL_PLATFORM=osmesa ...)."""
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    # mesa's llvmpipe and triton (which diffusers imports through torch._dynamo) each load
    # their own LLVM: importing triton after a GL context exists segfaults the process (seen
    # with mesa llvmpipe here), so triton is loaded first when it is installed
    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


# Lighting that moves with the camera: a strong key light from above and to one side, a
# weaker fill from the other side, little ambient light. Faces of different orientation then
# differ by enough grey levels for Canny's 100/200 thresholds to find the creases between
# them, not only the outline (a light at the camera with ambient 0.3 left most interior
# edges of a cube below the threshold). (pitch about the camera's x, yaw about its y, in
# degrees; intensity)
LIGHTS = ((45.0, -45.0, 8.0), (-30.0, 60.0, 2.5))
AMBIENT = 0.05


def _rotation(axis: int, degrees: float) -> np.ndarray:
    """4x4 right-handed rotation about the x (0), y (1) or z (2) axis."""
    angle = math.radians(degrees)
    first, second = (axis + 1) % 3, (axis + 2) % 3
    matrix = np.eye(4)
    matrix[first, first] = matrix[second, second] = math.cos(angle)
    matrix[first, second], matrix[second, first] = -math.sin(angle), math.sin(angle)
    return matrix


class MeshRenderer:
    """Offscreen pyrender renderer of one mesh at a time from :func:`camera_pose` s."""

    def __init__(self, size: int, fov: float) -> None:
        _ensure_gl_platform()
        try:
            import pyrender

            self._renderer = pyrender.OffscreenRenderer(size, size)
        except Exception as error:  # no EGL/OSMesa, no GL driver: say what to do
            raise HundredError(
                f"cannot create an offscreen OpenGL renderer (pyrender, PYOPENGL_PLATFORM="
                f"{os.environ.get('PYOPENGL_PLATFORM')}): {type(error).__name__}: {error}; "
                f"install EGL (libegl1, mesa) or set PYOPENGL_PLATFORM=osmesa with OSMesa") \
                from None
        self._pyrender = pyrender
        self.fov = fov
        self._scene: Any = None
        self._key: Any = None

    def _scene_of(self, key: Any, parts: Sequence[Any]) -> Any:
        if key != self._key:
            import trimesh

            pyrender = self._pyrender
            scene = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 1.0],
                                   ambient_light=[AMBIENT] * 3)
            for part in parts:
                shaded = trimesh.graph.smooth_shade(part)  # creases > 20 degrees stay sharp
                scene.add(pyrender.Mesh.from_trimesh(shaded, smooth=True))
            self._camera = scene.add(pyrender.PerspectiveCamera(yfov=math.radians(self.fov),
                                                                znear=0.01, zfar=100.0))
            self._lights = [(scene.add(pyrender.DirectionalLight(intensity=intensity)),
                             _rotation(1, yaw) @ _rotation(0, pitch))
                            for pitch, yaw, intensity in LIGHTS]
            self._scene, self._key = scene, key
        return self._scene

    def render(self, key: Any, parts: Sequence[Any], pose: Sequence[float]) -> np.ndarray:
        """RGB uint8 ``(size, size, 3)`` of ``parts`` (cached by ``key``) seen from ``pose``."""
        scene = self._scene_of(key, parts)
        matrix = camera_pose(*pose)
        scene.set_pose(self._camera, matrix)
        for light, relative in self._lights:
            scene.set_pose(light, matrix @ relative)
        color, _ = self._renderer.render(scene)
        return np.ascontiguousarray(color[..., :3], dtype=np.uint8)

    def close(self) -> None:
        self._renderer.delete()


def edge_map(image: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """Canny edges (uint8 0/255, ``H x W``) of an RGB uint8 image, aperture 3 (ControlNet's
    Canny annotator)."""
    import cv2

    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    return cv2.Canny(gray, low, high, apertureSize=3)


# ---------------------------------------------------------------------------- generation


def _dtype(device: Any, dtype: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in ("float32", "float16", "bfloat16"):
        raise HundredError(f"--dtype must be auto, float32, float16 or bfloat16, got {dtype!r}")
    return getattr(torch, dtype)


def load_pipeline(sd: Path, controlnet: Path, device: Any, dtype: Any) -> Any:
    """``StableDiffusionControlNetPipeline`` from the local folders (no download, no safety
    checker), with DDIM as the sampler (the paper's); HundredError when it does not load."""
    from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    verbosity = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()  # no advice to install accelerate, no progress bars
        library.disable_progress_bar()
    try:
        net = ControlNetModel.from_pretrained(controlnet, local_files_only=True,
                                              dtype=dtype)
        pipe = StableDiffusionControlNetPipeline.from_pretrained(
            sd, controlnet=net, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as error:
        raise HundredError(f"cannot load the ControlNet pipeline from --sd {sd} and "
                           f"--controlnet {controlnet}: {error}") from None
    finally:
        for library, level in zip((diffusers_logging, transformers_logging), verbosity):
            library.set_verbosity(level)
            library.enable_progress_bar()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate(pipe: Any, edges: list[np.ndarray], prompts: list[str], seeds: list[int],
             settings: Dst3dSettings) -> np.ndarray:
    """uint8 ``(B, gen_res, gen_res, 3)`` images from the ControlNet pipeline: each follows
    its edge map and prompt, with noise from its own seed (CPU generators: the same images on
    any device type for a given seed, up to the device's arithmetic)."""
    import torch
    from PIL import Image

    conditions = [Image.fromarray(np.repeat(edge[..., None], 3, axis=2)) for edge in edges]
    suffix = f", {settings.added_prompt}" if settings.added_prompt.strip() else ""
    with torch.inference_mode():
        result = pipe(
            prompt=[prompt + suffix for prompt in prompts], image=conditions,
            negative_prompt=[settings.negative_prompt] * len(prompts),
            num_inference_steps=settings.steps, guidance_scale=settings.guidance,
            eta=settings.eta, controlnet_conditioning_scale=settings.conditioning_scale,
            height=settings.gen_res, width=settings.gen_res, output_type="np",
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds])
    return np.rint(np.clip(result.images, 0.0, 1.0) * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------------- pack


def _small_file_sha256(path: Path) -> str | None:
    from hundred.io import sha256_file

    return sha256_file(path) if path.is_file() else None


def _check_space(out: Path, rows: int, res: int) -> None:
    needed = rows * (res * res * 3 + 8 + 40) + (1 << 20)
    existing = out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise HundredError(f"the dataset needs {needed / 1e9:.2f} GB, but {existing} has "
                           f"{free / 1e9:.2f} GB free")


def _write_split(partial: Path, split: str, plan: Plan, classes: list[MeshClass],
                 flat: list[tuple[int, Path]], settings: Dst3dSettings,
                 renderer: MeshRenderer, pipe: Any,
                 progress: Callable[[int], None]) -> dict[str, Any]:
    """Render, edge-detect, generate and store the rows of ``plan``; returns its meta entry."""
    from hundred.data.decode import resize_array
    from hundred.io import write_npy

    rows = len(plan.labels)
    images = np.lib.format.open_memmap(partial / f"{split}_images.npy", mode="w+",
                                       dtype=np.uint8,
                                       shape=(rows, settings.res, settings.res, 3))
    loaded: dict[int, list[Any]] = {}
    for start in range(0, rows, settings.batch_size):
        stop = min(rows, start + settings.batch_size)
        edges = []
        for row in range(start, stop):
            mesh = int(plan.meshes[row])
            if mesh not in loaded:
                loaded.clear()  # rows go mesh by mesh: keep one mesh in memory
                loaded[mesh] = load_mesh(flat[mesh][1])
            rendering = renderer.render(mesh, loaded[mesh], plan.poses[row])
            edges.append(edge_map(rendering, settings.canny_low, settings.canny_high))
        batch = generate(pipe, edges, plan.prompts[start:stop], plan.seeds[start:stop],
                         settings)
        images[start:stop] = np.stack([resize_array(image, settings.res) for image in batch])
        progress(stop - start)
    images.flush()
    del images
    write_npy(partial / f"{split}_labels.npy", plan.labels)
    write_npy(partial / f"{split}_poses.npy", plan.poses.astype(np.float64))
    write_npy(partial / f"{split}_meshes.npy", plan.meshes)
    return {"count": rows,
            "class_counts": np.bincount(plan.labels, minlength=len(classes)).tolist(),
            "images": f"{split}_images.npy", "labels": f"{split}_labels.npy"}


def _pose_records(plan: Plan, classes: list[MeshClass], names: list[str]) -> list[dict]:
    return [{"row": row, "label": int(plan.labels[row]),
             "class": classes[int(plan.labels[row])].class_id,
             "mesh": names[int(plan.meshes[row])],
             **{column: float(plan.poses[row, index])
                for index, column in enumerate(POSE_COLUMNS)},
             "prompt": plan.prompts[row], "seed": plan.seeds[row]}
            for row in range(len(plan.labels))]


def dst3d_pack(meshes: str | os.PathLike, out: str | os.PathLike, *,
               sd: str | os.PathLike | None, controlnet: str | os.PathLike | None,
               prompts: str | os.PathLike | None = None, device: str = "auto",
               dtype: str = "auto", replace: bool = False, quiet: bool = False,
               **settings: Any) -> dict[str, Any]:
    """Generate a 3D-DST dataset from the meshes under ``meshes`` into the packed directory
    ``out``; returns its meta.json.

    ``sd`` / ``controlnet``: local diffusers folders; ``prompts``: JSON/YAML class -> prompt(s);
    ``settings``: fields of :class:`Dst3dSettings`. Every check (settings, paths, meshes,
    prompts, weights, renderer, pipeline, disk space) runs before anything is written.
    """
    from hundred import __version__
    from hundred.data import decode
    from hundred.data.pack import FORMAT, FORMAT_VERSION, is_packed, record_arrays
    from hundred.engine.trainer import resolve_device
    from hundred.io import check_replaceable, write_json
    from hundred.data.copies import building_copy, publish_copy

    started = time.time()
    checked = check_settings(**settings)
    root = Path(meshes).expanduser().absolute()
    out = Path(out).expanduser().absolute()
    if root == out or root in out.parents or out in root.parents:
        raise HundredError(f"--out {out} and the meshes {root} lie inside one another; "
                           f"choose an --out beside them")
    check_replaceable(out, replace, is_packed, "packed dataset")
    classes = find_meshes(root)
    read_prompts(Path(prompts).expanduser() if prompts is not None else None, classes,
                 checked.prompt_template)
    sd_dir = Path(sd).expanduser().absolute() if sd is not None else None
    controlnet_dir = Path(controlnet).expanduser().absolute() if controlnet is not None \
        else None
    check_weights(sd_dir, controlnet_dir)
    assert sd_dir is not None and controlnet_dir is not None
    torch_device = resolve_device(device)
    torch_dtype = _dtype(torch_device, dtype)
    plans = {split: plan_split(split, classes, per_class, checked) for split, per_class in
             (("train", checked.train_per_class), ("val", checked.val_per_class))}
    flat = [(label, file) for label, mesh_class in enumerate(classes)
            for file in mesh_class.files]
    names = [file.relative_to(root).as_posix() for _, file in flat]
    used = sorted({int(mesh) for plan in plans.values() for mesh in plan.meshes})
    for mesh in used:  # a broken mesh fails now, not an hour into generation
        load_mesh(flat[mesh][1])
    _check_space(out, sum(len(plan.labels) for plan in plans.values()), checked.res)
    renderer = MeshRenderer(checked.gen_res, checked.fov)
    try:
        pipe = load_pipeline(sd_dir, controlnet_dir, torch_device, torch_dtype)
        total = sum(len(plan.labels) for plan in plans.values())
        with _progress(quiet) as bar, building_copy(out) as partial:
            task = bar.add_task("3D-DST", total=total)
            splits_meta = {split: _write_split(partial, split, plan, classes, flat, checked,
                                               renderer, pipe,
                                               lambda n: bar.advance(task, n))
                           for split, plan in plans.items()}
            arrays = [name for split in plans for name in
                      (f"{split}_images.npy", f"{split}_labels.npy", f"{split}_poses.npy",
                       f"{split}_meshes.npy")]
            write_json(partial / POSES_JSON, {
                "columns": list(POSE_COLUMNS), "units": list(POSE_UNITS),
                "convention": POSE_CONVENTION,
                **{split: _pose_records(plan, classes, names) for split, plan in plans.items()}})
            seconds = time.time() - started
            record = {
                "paper": PAPER,
                "pose_columns": list(POSE_COLUMNS),
                "pose_units": list(POSE_UNITS),
                "pose_convention": POSE_CONVENTION,
                "poses": {split: f"{split}_poses.npy" for split in plans},
                "mesh_index": {split: f"{split}_meshes.npy" for split in plans},
                "poses_json": POSES_JSON,
                "meshes": names,
                "meshes_root": str(root),
                "prompts": {mesh_class.class_id: mesh_class.prompts for mesh_class in classes},
                "prompts_file": str(prompts) if prompts is not None else None,
                "settings": checked.model_dump(),
                "renderer": "pyrender (OpenGL offscreen, "
                            f"PYOPENGL_PLATFORM={os.environ.get('PYOPENGL_PLATFORM')}), black "
                            f"background, ambient {AMBIENT}, directional lights moving with "
                            f"the camera (pitch, yaw, intensity) {list(LIGHTS)}, creases > 20 "
                            "degrees sharp",
                "sampler": "DDIM (diffusers DDIMScheduler from the SD folder's config)",
                "weights": {
                    "sd": str(sd_dir), "controlnet": str(controlnet_dir),
                    "sd_model_index_sha256": _small_file_sha256(sd_dir / "model_index.json"),
                    "controlnet_config_sha256": _small_file_sha256(controlnet_dir
                                                                   / "config.json")},
                "device": str(torch_device), "dtype": str(torch_dtype).removeprefix("torch."),
                "images": total,
                "seconds_per_image": round(seconds / max(1, total), 4),
            }
            meta = {
                "format": FORMAT, "format_version": FORMAT_VERSION,
                "name": f"dst3d-{root.name}", "source": f"dst3d:{root}", "options": {},
                "list": None, "resolution": checked.res, "resize": "shorter-crop",
                "resample": decode.RESAMPLE_NAME, "draft": False,
                "num_classes": len(classes),
                "class_ids": [mesh_class.class_id for mesh_class in classes],
                "class_names": [mesh_class.name for mesh_class in classes],
                "splits": splits_meta,
                "files": record_arrays(partial, arrays),
                "skipped": [], "warnings": [],
                "info": {"dst3d": record},
                "dst3d": record,
                "hundred_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(seconds, 2),
            }
            publish_copy(partial, out, meta, replace)
    finally:
        renderer.close()
    return meta


def _progress(quiet: bool) -> Any:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    disable=quiet, transient=False)


def load_poses(path: str | os.PathLike, split: str = "train") -> np.ndarray:
    """The checked ``(N, 4)`` poses (azimuth, elevation, theta, distance) of a split of a
    3D-DST pack, rows aligned with its images and labels."""
    from hundred.data.pack import load_packed

    path = Path(path).expanduser()
    dataset = load_packed(path)  # sha256 of every listed array, poses included
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    record = meta.get("dst3d")
    if not isinstance(record, dict) or split not in record.get("poses", {}):
        raise HundredError(f"{path} is not a 3D-DST dataset with a {split} split "
                           f"(hundred data dst3d)")
    poses = np.load(path / record["poses"][split], mmap_mode="r", allow_pickle=False)
    if poses.shape != (len(dataset.arrays(split).labels), len(POSE_COLUMNS)):
        raise HundredError(f"{path}: {record['poses'][split]} has shape {poses.shape}")
    return np.asarray(poses)


# ------------------------------------------------------------------------------------ CLI


def add_dst3d_command(data_commands: Any) -> None:
    """Add ``hundred data dst3d`` to the ``hundred data`` sub-parser group."""
    parser = data_commands.add_parser(
        "dst3d", help="3D-DST: render meshes from sampled poses, generate images with a "
        "Canny ControlNet (local weights) and pack them with their 3D pose annotations",
        description="Ma et al., 3D-DST (ICLR 2024). MESHES holds one folder of mesh files "
        "(.obj .glb .gltf .ply .off .stl) per class. Each image: a pose is sampled, the mesh "
        "rendered offscreen (pyrender), its Canny edges and the class prompt condition a "
        "ControlNet over Stable Diffusion; the packed output (train and val splits) stores "
        "every image's azimuth/elevation/theta/distance (train_poses.npy, poses.json). "
        "Weights are local diffusers folders; nothing is downloaded. Bad input writes "
        "nothing.")
    parser.add_argument("meshes", help="folder with one sub-folder of mesh files per class")
    parser.add_argument("--sd", required=True, help="local Stable Diffusion 1.x diffusers "
                        "folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, "
                        "scheduler/)")
    parser.add_argument("--controlnet", required=True, help="local ControlNet diffusers folder "
                        "(config.json + weights), a Canny one")
    parser.add_argument("--out", required=True, help="output packed directory (must not exist)")
    parser.add_argument("--prompts", help="JSON/YAML file: class folder name -> prompt or "
                        "list of prompts (default: --prompt-template)")
    parser.add_argument("--prompt-template", help="class prompt with {class} (default "
                        "'a photo of a {class}')")
    parser.add_argument("--train-per-class", type=int, help="train images per class "
                        "(default 100)")
    parser.add_argument("--val-per-class", type=int, help="val images per class (default 20)")
    parser.add_argument("--res", type=int, help="packed image side (default 64)")
    parser.add_argument("--gen-res", type=int, help="rendering/generation side (default 512)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default 20)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default 9)")
    parser.add_argument("--eta", type=float, help="DDIM eta (default 1)")
    parser.add_argument("--conditioning-scale", type=float, help="ControlNet strength "
                        "(default 1)")
    parser.add_argument("--seed", type=int, help="seed of poses and noise (default 0)")
    parser.add_argument("--batch-size", type=int, help="images per ControlNet call (default 4)")
    parser.add_argument("-o", "--option", action="append", default=[], metavar="NAME=VALUE",
                        help="any other setting, e.g. -o theta_std=15 -o elevation_std=20 "
                        "-o distance=2 -o canny_low=50 -o added_prompt='' (repeatable)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", help="auto (float16 on CUDA, else "
                        "float32), float32, float16, bfloat16")
    parser.add_argument("--replace", "--force", dest="replace", action="store_true",
                        help="replace an existing packed --out")
    parser.set_defaults(func=_cmd_data_dst3d)


def _cmd_data_dst3d(args: argparse.Namespace) -> None:
    import yaml

    from hundred.cli import parse_options

    settings: dict[str, Any] = {}
    for name, value in parse_options(args.option).items():
        name = name.replace("-", "_")
        known = Dst3dSettings.model_fields.get(name)
        if known is not None and known.annotation in (str, "str"):
            settings[name] = value  # prompts stay text, whatever YAML would make of them
            continue
        try:
            settings[name] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            raise HundredError(f"-o {name}={value}: the value is not a number or word") \
                from None
    for name in ("prompt_template", "train_per_class", "val_per_class", "res", "gen_res",
                 "steps", "guidance", "eta", "conditioning_scale", "seed", "batch_size"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    meta = dst3d_pack(args.meshes, args.out, sd=args.sd, controlnet=args.controlnet,
                      prompts=args.prompts, device=args.device, dtype=args.dtype,
                      replace=args.replace, **settings)
    counts = ", ".join(f"{split} {entry['count']}" for split, entry in meta["splits"].items())
    print(f"3D-DST: {meta['num_classes']} classes ({counts}) at {meta['resolution']}px with "
          f"poses into {args.out} ({meta['seconds']:.1f} s)")
