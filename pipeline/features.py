"""The feature classifier of an image data set: FID / KID / precision-recall features that need no download.

A small convolutional classifier is trained on the data set's training split and labels; its
penultimate layer plays the role Inception's pool3 plays in FID (Heusel et al. 2017), so FID
works offline on digits or MNIST. Its test accuracy is reported beside every FID it produces
(a feature space of a classifier that cannot tell the classes apart would make FID meaningless).
Values computed in this feature space are comparable only with each other, never with
Inception FIDs of papers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pipeline import rng
from pipeline.nets.unet import group_norm

CLASSIFIER_FORMAT = 1


class FeatureClassifier(nn.Module):
    """x [B, C, H, W] in [-1, 1] -> (features [B, features], logits [B, classes]).

    Three 3x3 convolutions (the last two strided), GroupNorm and SiLU, global average pooling,
    a linear feature layer (SiLU) and a linear read-out.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, features: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), group_norm(width, 8), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), group_norm(2 * width, 8), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), group_norm(2 * width, 8), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, features), nn.SiLU())
        self.readout = nn.Linear(features, num_classes)
        self.architecture = {"in_channels": in_channels, "num_classes": num_classes, "width": width,
                             "features": features}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(x)
        return features, self.readout(features)


@dataclass(frozen=True)
class ClassifierResult:
    classifier: FeatureClassifier
    train_accuracy: float
    test_accuracy: float


def accuracy(classifier: FeatureClassifier, x: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    classifier.eval()
    with torch.no_grad():
        correct = sum(int((classifier(x[i:i + batch_size])[1].argmax(1) == labels[i:i + batch_size]).sum())
                      for i in range(0, len(x), batch_size))
    return correct / len(x)


def train_classifier(train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, settings,
                     seed: int, device: torch.device | str = "cpu") -> ClassifierResult:
    """Adam with cosine decay and cross-entropy on random batches, every draw from one seeded generator."""
    device = torch.device(device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    classifier = FeatureClassifier(train.shape[1], num_classes, settings.width, settings.features).to(device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    train, train_labels = train.to(device), train_labels.to(device)
    classifier.train()
    for _ in range(settings.steps):
        index = rng.integers(0, len(train), (min(settings.batch_size, len(train)),), generator, "cpu").to(device)
        loss = F.cross_entropy(classifier(train[index])[1], train_labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    classifier = classifier.cpu()
    return ClassifierResult(classifier.eval(), accuracy(classifier, train.cpu(), train_labels.cpu()),
                            accuracy(classifier, test, test_labels))


def classifier_record(result: ClassifierResult, data_sha256: str, data_shape: list[int]) -> dict:
    """What the features stage saves: weights, architecture, accuracies and the data they came from."""
    return {"format": CLASSIFIER_FORMAT, "kind": "image", "architecture": result.classifier.architecture,
            "state_dict": result.classifier.state_dict(), "train_accuracy": result.train_accuracy,
            "test_accuracy": result.test_accuracy, "data_sha256": data_sha256, "data_shape": data_shape}


def load_classifier(path) -> FeatureClassifier:
    """Rebuild the classifier the features stage saved (raises ValueError on another kind of file)."""
    record = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(record, dict) or record.get("format") != CLASSIFIER_FORMAT or record.get("kind") != "image":
        raise ValueError(f"{path} is not a feature classifier of this pipeline")
    classifier = FeatureClassifier(**record["architecture"])
    classifier.load_state_dict(record["state_dict"])
    return classifier.eval()
