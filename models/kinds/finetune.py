"""``finetune``: a classifier of the catalog (``model``) with a new head, trained on a
dataset and served as a new classifier under ``name``, owned by the submitting key."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from models.kinds.common import Args, Input, Kind, UploadRef, seed_field

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"  # a fine-tuned model's name
Mode = Literal["linear_probe", "finetune", "scratch"]


class BuiltinDataset(Input):
    """A procedural dataset built in (no upload): a draw of ``per_class`` images a class."""

    builtin: Literal["shapes-new", "shapes-outline", "digits-5-9", "digits-0-4"] = Field(
        description="shapes-new: ellipse, cross, crescent, hexagon; shapes-outline: the "
        "four shapes as outlines; digits-5-9 / digits-0-4: scikit-learn's digits",
        examples=["shapes-new"])
    per_class: int = Field(20, ge=1, le=500, description="training images of every class",
                           examples=[20])


class FinetuneInput(Input):
    """``finetune``: the base model (``model``) with a new head, trained on the dataset and
    served as a new classifier named ``name``, owned by the submitting key."""

    name: str = Field(pattern=NAME_PATTERN, description="the new model's name (never a "
                      "catalog model's; unique among the key's models)",
                      examples=["my-shapes"])
    dataset: UploadRef | BuiltinDataset = Field(
        description="a zip or tar of one folder per class, uploaded with POST /v1/uploads "
        "and named as {\"upload\": id}, or a built-in set, {\"builtin\": name, "
        "\"per_class\": n}",
        examples=[{"builtin": "shapes-new", "per_class": 20}])
    mode: Mode = Field(
        "finetune", description="which weights train (linear_probe: the new head alone, "
        "the backbone frozen; finetune: every layer, the backbone at learning_rate x "
        "backbone_lr_factor; scratch: the same architecture from random weights)",
        examples=["finetune"])
    epochs: int = Field(10, ge=1, le=200, description="passes over the training images",
                        examples=[10])
    batch_size: int = Field(32, ge=1, le=256, description="images per step", examples=[32])
    learning_rate: float = Field(1e-3, ge=1e-6, le=1.0, description="the head's (AdamW)",
                                 examples=[0.001])
    backbone_lr_factor: float = Field(0.1, ge=0.0, le=1.0, description="finetune: the "
                                      "backbone's learning rate over the head's",
                                      examples=[0.1])
    augment: bool = Field(True, description="random shifts, rotations and scaling",
                          examples=[True])
    val_share: float = Field(0.2, ge=0.0, le=0.5, description="share of each class held "
                             "back to validate after every epoch", examples=[0.2])
    early_stopping: int = Field(0, ge=0, le=50, description="stop after this many epochs "
                                "without a better validation accuracy (0: never)",
                                examples=[3])
    seed: int | None = seed_field()


class FinetuneArgs(Args):
    """The training run's settings, the seed drawn (the trainer's view of the input)."""

    name: str
    dataset: UploadRef | BuiltinDataset
    mode: Mode = "finetune"
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    backbone_lr_factor: float = 0.1
    augment: bool = True
    val_share: float = 0.2
    early_stopping: int = 0
    seed: int = 0


KIND = Kind("finetune", FinetuneInput, FinetuneArgs, example={
    "model": "resnet18-shapes", "input": {
        "name": "my-shapes", "dataset": {"builtin": "shapes-new", "per_class": 20},
        "mode": "finetune", "epochs": 10}})
