"""Transfer learning: a classifier of the catalog moved to a new set of classes.

- ``archive``: a dataset archive (zip or tar, one folder per class) checked member by
  member before anything is unpacked; no torch here, so that the API can check one too.
- ``datasets``: the built-in procedural sets, by name (no download).
- ``transfer``: the base model with a new head, and which of its parameters train in each
  mode (``linear_probe``, ``finetune``, ``scratch``).
- ``loop``: the training loop (bounded hyperparameters, progress, cancel, deadline, a
  checkpoint per epoch and resuming from one).
"""

# Families whose catalog entries can be a base (their weights and head are found without
# a per-model rule); read by the API, so kept free of torch.
FAMILIES = ("lenet5", "alexnet", "vgg", "googlenet", "resnet", "torchvision")


def can_finetune(family: str, kinds: list[str], has_weights: bool) -> bool:
    return "classify" in kinds and has_weights and family in FAMILIES
