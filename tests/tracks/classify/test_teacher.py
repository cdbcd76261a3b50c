"""Teachers: a finished run (or a timm model with a local weights file) distils into a
student; the teacher is frozen, outside the optimiser and the checkpoint, runs once per
batch; a teacher that does not fit gives one clear error and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hundred.config import build_config
from hundred.errors import HundredError
from hundred.registry import get_method
from hundred.tracks.classify import TRACK


def tiny(root: Path, *extra: str, classes: int = 4):
    return build_config(overrides=[
        "track=classify", "model.name=convnet_d3", "train.device=cpu", "quiet=true",
        f"data.options={{classes: {classes}, train_per_class: 8, val_per_class: 4, res: 8}}",
        "data.batch_size=16", "train.epochs=1", f"root={root}", *extra])


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("teacher")
    summary = TRACK.run(tiny(root, "method=erm", "name=teacher", "train.epochs=2"))
    return Path(summary["run_dir"])


def kd_config(root: Path, teacher: str, name: str = "student", classes: int = 4):
    return tiny(root, "method=kd", f"name={name}", f"classify.teacher={teacher}",
                classes=classes)


def test_kd_distils_a_finished_run_without_training_or_saving_it(tmp_path, teacher_dir,
                                                                  monkeypatch):
    config = kd_config(tmp_path, str(teacher_dir))
    method = get_method("classify", "kd")(config.method_params, config)
    calls = []
    original = method.teacher_logits.__func__

    def counted(self, images):
        calls.append(len(images))
        return original(self, images)

    monkeypatch.setattr(type(method), "teacher_logits", counted)
    before = {k: v.clone() for k, v in load_file(next(
        (teacher_dir / "checkpoints").glob("*.safetensors"))).items()}
    summary = TRACK.run(config, method=method)
    teacher = method.frozen["teacher"]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert len(calls) == 2  # 32 images, batch 16, one epoch: once per batch, never twice
    weights = load_file(next((Path(summary["run_dir"]) / "checkpoints").glob("*.safetensors")))
    assert not any(k.startswith(("method.", "teacher")) for k in weights)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key  # the teacher was never trained
    assert summary["teacher_spec"] == str(teacher_dir) and 0 <= summary["val_ece"] <= 100
    assert summary["teacher"] == "convnet_d3 (run teacher)"  # the report column


def test_a_teacher_that_does_not_fit_writes_nothing(tmp_path, teacher_dir):
    def refused(teacher: str, match: str, classes: int = 4) -> None:
        config = kd_config(tmp_path / "runs", teacher, classes=classes)
        method = get_method("classify", "kd")(config.method_params, config)
        with pytest.raises(HundredError, match=match):
            TRACK.run(config, method=method)
        assert not (tmp_path / "runs").exists()

    refused(str(teacher_dir), r"4 classes.*has 6 classes", classes=6)
    refused(str(tmp_path / "nowhere"), "does not exist")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.yaml", "summary.json"):
        (broken / name).write_bytes((teacher_dir / name).read_bytes())
    (broken / "checkpoints").mkdir()
    for path in (teacher_dir / "checkpoints").iterdir():
        data = path.read_bytes()
        (broken / "checkpoints" / path.name).write_bytes(
            data[: len(data) // 2] if path.suffix == ".safetensors" else data)
    refused(str(broken), "unreadable")
    no_teacher = tiny(tmp_path / "runs", "method=kd", "name=x")
    with pytest.raises(HundredError, match="--teacher"):
        TRACK.run(no_teacher, method=get_method("classify", "kd")(no_teacher.method_params,
                                                                   no_teacher))
    assert not (tmp_path / "runs").exists()


def test_a_timm_teacher_with_a_local_weights_file(tmp_path):
    from hundred.models import create

    model = create("resnet18", 4, img_size=8)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "r18.safetensors"))
    config = kd_config(tmp_path, f"timm:resnet18:{tmp_path / 'r18.safetensors'}")
    summary = TRACK.run(config)
    assert summary["teacher_spec"].startswith("timm:resnet18:")
    assert summary["teacher"].startswith("timm:resnet18 (")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes((tmp_path / "r18.safetensors").read_bytes()[:1000])
    with pytest.raises(HundredError, match="unreadable"):
        TRACK.run(kd_config(tmp_path, f"timm:resnet18:{truncated}", name="cut"))


@pytest.mark.parametrize("method", ["nkd", "pld"])
def test_every_distillation_method_trains_against_the_teacher(tmp_path, teacher_dir, method):
    config = tiny(tmp_path, f"method={method}", "name=s", f"classify.teacher={teacher_dir}")
    summary = TRACK.run(config)
    assert summary["method"] == method and summary["teacher_spec"] == str(teacher_dir)
    assert 0 <= summary["val_top1"] <= 100
