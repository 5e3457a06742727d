"""The bundled digit classifier: labels generated demo samples; its penultimate layer is the
demo feature extractor. A small CNN over 8×8 digits in [−1, 1]."""

from __future__ import annotations

import torch
from torch import nn

FEATURE_DIM = 64


class DigitClassifier(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * width, FEATURE_DIM), nn.SiLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations [N, 64]: the demo's feature space for kNN metrics."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def fit_digit_classifier(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, shift_augment: bool = False) -> DigitClassifier:
    """Train a fresh classifier (AdamW, batch 64); ±1 px random shifts when `shift_augment`.
    One routine for the bundled classifier and augment-eval's downstream classifier, so the
    latter measures the data, not a different training recipe."""
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model = DigitClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x), generator=generator).split(64):
            xb = x[batch]
            if shift_augment:
                shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
                xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()
