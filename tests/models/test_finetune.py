"""Transfer learning without the service: archive checks, the head each family gets, what
trains in each mode, hyperparameter bounds, stopping, and resuming from a checkpoint."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from models.finetune.archive import ArchiveLimits, InvalidArchive, images, inspect, pack_folder
from models.finetune.datasets import BUILTIN, builtin, held_out
from models.finetune.loop import Checkpoint, Hyper, Stopped, fit
from models.finetune.transfer import Base, prepare


def _png(colour: int = 0, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf


def test_an_archive_lists_its_classes_under_an_optional_top_folder() -> None:
    listing = inspect(_zip({"set/b/1.png": _png(), "set/a/1.png": _png(), "set/a/2.png": _png(),
                            "__MACOSX/set/a/._1.png": b"junk", "set/a/.DS_Store": b"junk"}))
    assert listing.labels == ["a", "b"] and listing.counts() == {"a": 2, "b": 1}
    decoded = list(images(_zip({"a/1.png": _png(10), "b/1.png": _png(200)}),
                          inspect(_zip({"a/1.png": _png(10), "b/1.png": _png(200)}))))
    assert [t for _, t in decoded] == [0, 1] and decoded[1][0].getpixel((0, 0)) == 200


def _tar(entries: list[tarfile.TarInfo], data: bytes = b"") -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info in entries:
            tf.addfile(info, io.BytesIO(data) if info.isfile() else None)
    buf.seek(0)
    return buf


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info


@pytest.mark.parametrize("archive,why", [
    (lambda: _zip({"/etc/a/1.png": _png(), "b/1.png": _png()}), "absolute"),
    (lambda: _zip({"a/../../1.png": _png(), "b/1.png": _png()}), "'..'"),
    (lambda: _zip({"a/1.png": _png(), "b/bomb.png": bytes(4 << 20)}), "zip bomb"),
    (lambda: _zip({"a/1.png": _png(), "a/2.png": _png()}), "at least two"),
    (lambda: _zip({"1.png": _png(), "b/1.png": _png()}), "outside any class folder"),
    (lambda: _zip({"a/x/1.png": _png(), "b/1.png": _png()}), "nested"),
    (lambda: _tar([_info("a/1.png", size=len(_png())), _info("b/l.png", tarfile.SYMTYPE,
                                                             link="/etc/passwd")], _png()), "link"),
    (lambda: _tar([_info("a/1.png", size=len(_png())), _info("b/h.png", tarfile.LNKTYPE,
                                                             link="a/1.png")], _png()), "link"),
    (lambda: _tar([_info("a/1.png", size=len(_png())), _info("b/dev.png", tarfile.CHRTYPE)],
                  _png()), "device"),
    (lambda: io.BytesIO(b"just some text, not an archive"), "not a zip or tar"),
])
def test_bad_archives_are_refused_before_anything_is_read(archive: Any, why: str) -> None:
    with pytest.raises(InvalidArchive, match=why):
        inspect(archive())


def test_a_zip_symlink_and_a_tar_bomb_by_ratio_are_refused() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/1.png", _png())
        link = zipfile.ZipInfo("b/1.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "../../etc/passwd")
    with pytest.raises(InvalidArchive, match="'b/1.png': a symbolic link"):
        inspect(buf)
    zeros = bytes(2 << 20)
    bomb = _tar([_info("a/1.png", size=len(zeros)), _info("b/1.png", size=len(zeros))], zeros)
    with pytest.raises(InvalidArchive, match="times its"):
        inspect(bomb)


def test_limits_on_files_and_pixels_and_unreadable_members_name_the_member() -> None:
    many = _zip({f"{c}/{i}.png": _png() for c in "ab" for i in range(6)})
    with pytest.raises(InvalidArchive, match="over the limit of 10 images"):
        inspect(many, ArchiveLimits(max_files=10))
    big = _zip({"a/1.png": _png(size=64), "b/1.png": _png()})
    with pytest.raises(InvalidArchive, match="'a/1.png': 64x64 pixels"):
        list(images(big, inspect(big), ArchiveLimits(max_pixels=1000)))
    gif = io.BytesIO()
    Image.new("L", (4, 4)).save(gif, format="GIF")
    odd = _zip({"a/1.png": _png(), "b/anim.gif": gif.getvalue(), "b/x.png": b"text"})
    with pytest.raises(InvalidArchive, match="'b/anim.gif': GIF is not accepted"):
        list(images(odd, inspect(odd)))


def test_pack_folder_takes_class_folders_of_images_only(tmp_path: Path) -> None:
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "1.png").write_bytes(_png())
    (tmp_path / "readme.txt").write_text("not packed")
    (tmp_path / "cat" / "notes.txt").write_text("not packed")
    buf = io.BytesIO()
    assert pack_folder(str(tmp_path), buf) == 2
    assert inspect(buf).labels == ["cat", "dog"]


def test_builtin_sets_keep_training_draws_out_of_their_held_out_sets() -> None:
    assert set(BUILTIN) == {"shapes-new", "shapes-outline", "digits-5-9", "digits-0-4"}
    train = builtin("digits-5-9", per_class=5, seed=3)
    assert train.labels == ["5", "6", "7", "8", "9"] and train.counts() == dict.fromkeys(train.labels, 5)
    _, x, y = held_out("digits-5-9", per_class=5, seed=3)
    drawn = {bytes(im.tobytes()) for im in train.images}
    from models.images import to_pil

    assert not drawn & {bytes(to_pil(t).tobytes()) for t in x}
    assert len(y) > 700 and set(y.tolist()) == set(range(5))
    shapes = builtin("shapes-new", per_class=2)
    assert shapes.labels == ["ellipse", "cross", "crescent", "hexagon"] and len(shapes.images) == 8


def _tiny_base(tmp_path: Path) -> Base:
    """A LeNet-5 saved as a base (random weights: enough to follow the plumbing)."""
    from models.checkpoint import save_checkpoint
    from models.registry import get_model

    config = {"in_channels": 1, "num_classes": 3, "activation": "relu", "pooling": "max"}
    torch.manual_seed(0)
    weights = save_checkpoint(tmp_path / "base.safetensors", get_model("lenet5", **config),
                              {"arch": "lenet5", "config": config})
    return Base("tiny", "lenet5", "lenet5", config, {"channels": 1, "height": 32, "width": 32},
                weights=weights)


def test_the_head_is_what_depends_on_the_class_count_and_modes_train_what_they_say(
        tmp_path: Path) -> None:
    base = _tiny_base(tmp_path)
    assert base.head_names(5) == {"head.3.weight", "head.3.bias"}
    probe = prepare(base, 5, "linear_probe", lr=0.01)
    assert probe.trainable == 84 * 5 + 5 and len(probe.groups) == 1
    tuned = prepare(base, 5, "finetune", lr=0.01, backbone_lr_factor=0.1)
    assert [g["lr"] for g in tuned.groups] == [0.01, pytest.approx(0.001)]
    from models.checkpoint import load_state

    base_conv = load_state(base.weights)["features.0.weight"]  # type: ignore[arg-type]
    assert torch.equal(tuned.model.state_dict()["features.0.weight"], base_conv)
    scratch = prepare(base, 5, "scratch", lr=0.01)
    assert not torch.equal(scratch.model.state_dict()["features.0.weight"], base_conv)


def test_googlenet_and_torchvision_heads_are_found_without_a_family_rule() -> None:
    tv = Base("tv", "torchvision", "resnet18", {}, {"channels": 3, "height": 64, "width": 64})
    assert tv.head_names(7) == {"fc.weight", "fc.bias"}
    from models.catalog import Catalog

    g = Base.from_entry(Catalog.load().get("googlenet-shapes"))  # saved without aux heads
    assert g.head_names(7) == {"head.3.weight", "head.3.bias"}
    g.config["aux_logits"] = True  # with them, their last layers are heads as well
    assert g.head_names(7) == {f"{m}.{p}" for m in ("aux1.6", "aux2.6", "head.3")
                               for p in ("weight", "bias")}


def test_hyperparameters_are_bounded() -> None:
    with pytest.raises(ValueError, match="epochs 0 is outside"):
        Hyper(epochs=0)
    with pytest.raises(ValueError, match="unknown mode"):
        Hyper(mode="everything")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="val_share 0.9"):
        Hyper(val_share=0.9)


class _Record:
    def __init__(self, stop_at: int | None = None) -> None:
        self.steps: list[dict[str, Any]] = []
        self.checkpoints: list[Checkpoint] = []
        self.stop_at = stop_at

    def step(self, report: dict[str, Any]) -> bool:
        self.steps.append(report)
        return self.stop_at is None or report["step"] < self.stop_at

    def epoch(self, report: dict[str, Any], checkpoint: Checkpoint) -> None:
        self.checkpoints.append(checkpoint)


def test_stop_at_a_step_and_resume_from_the_last_epoch_runs_only_what_is_left(
        tmp_path: Path) -> None:
    base = _tiny_base(tmp_path)
    data = builtin("digits-5-9", per_class=8)
    hyper = Hyper(epochs=4, batch_size=8, val_share=0.25, seed=2)
    whole = _Record()
    full = fit(base, data.labels, data.images, data.targets, hyper, whole)
    per_epoch = len(whole.steps) // 4
    assert full.steps == 4 * per_epoch and full.resumed_from == 0
    assert {"loss", "train_accuracy", "eta_s", "epoch"} <= set(whole.steps[-1])

    cut = _Record(stop_at=2 * per_epoch + 1)  # dies in the third epoch
    with pytest.raises(Stopped):
        fit(base, data.labels, data.images, data.targets, hyper, cut)
    assert len(cut.checkpoints) == 2
    resumed = fit(base, data.labels, data.images, data.targets, hyper, _Record(),
                  resume=cut.checkpoints[-1])
    assert resumed.resumed_from == 2 and resumed.steps == 2 * per_epoch
    assert len(resumed.sidecar["finetune"]["history"]) == 4
    # the same batches and the same optimizer state: the same weights as the whole run
    for k, v in full.model.state_dict().items():
        assert torch.allclose(v, resumed.model.state_dict()[k], atol=1e-5), k


def test_early_stopping_ends_the_run_after_epochs_without_progress(tmp_path: Path) -> None:
    base = _tiny_base(tmp_path)
    data = builtin("digits-5-9", per_class=4)
    result = fit(base, data.labels, data.images, data.targets,
                 Hyper(epochs=50, batch_size=16, learning_rate=1e-6, val_share=0.25,
                       early_stopping=2))
    assert result.metrics["epochs_run"] < 50
