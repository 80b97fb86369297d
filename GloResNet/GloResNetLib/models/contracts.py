"""What a backbone registered in :data:`~GloResNetLib.models.ARCHITECTURES` provides to the rest of the library.

Prediction (:func:`~GloResNetLib.inference.network_pass`), Grad-CAM, occlusion and the fast inference copy
(:mod:`~GloResNetLib.fastnet`) do not run ``forward`` as one call: they take the feature maps of the CAM stage,
pool them and apply the head separately, so that Grad-CAM comes from the prediction pass. Every architecture
therefore splits ``forward`` into three steps with these shapes (B batch, C_in input channels, C feature
channels, K outputs)::

    x (B, C_in, X, Y, Z) --features--> A (B, C, x, y, z) --pool_features--> p (B, C') --head--> logits (B, K)

``forward(x) == head(pool_features(features(x)))``. Three members are optional (looked up with ``getattr``):

* ``pool_features`` (:class:`PoolingBackbone`): a model without it is pooled by global average pooling,
  ``(B, C, x, y, z) -> (B, C)``; a model with it (stages after the CAM stage, slice position embeddings,
  attention over slices) gets Grad-CAM weights from the spatial mean of d score / d A, as
  ``monai.visualize.GradCAM``.
* ``gradcam`` (:class:`GradCamBackbone`): the model's own Grad-CAM ``(feats, class_idx) -> (B, x, y, z)``
  (e.g. per-slice weights for the slice encoder).
* ``load_pretrained_file`` (:class:`PretrainedLoader`): initialise from a weights file of another layout
  (2D torchvision ResNet weights for the ACS and slice backbones); otherwise MedicalNet-layout loading is used.

The protocols are ``runtime_checkable``: ``isinstance(model, Backbone)`` checks that the methods exist (not
their shapes; ``Testing/test_models.py`` checks those for every registered architecture).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from .weights import LoadReport

__all__ = ["Backbone", "GradCamBackbone", "PoolingBackbone", "PretrainedLoader"]


@runtime_checkable
class Backbone(Protocol):
    """A classifier or regressor split into feature maps, (optional) pooling and a head."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps of the CAM stage.

        Args:
            x: preprocessed volumes, shape (B, C_in, X, Y, Z).
        Returns:
            Activations A, shape (B, C, x, y, z), spatial axes in the input's order.
        """
        ...

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Outputs from the pooled feature vector.

        Args:
            pooled: shape (B, C') (global average of ``features`` unless the model has ``pool_features``).
        Returns:
            Logits (B, K) of a classifier, or (B, 1) standardised values of a regressor.
        """
        ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``head(pool(features(x)))``: (B, C_in, X, Y, Z) -> (B, K)."""
        ...


@runtime_checkable
class PoolingBackbone(Backbone, Protocol):
    """A backbone with its own pooling between the CAM stage and the head."""

    def pool_features(self, feats: torch.Tensor) -> torch.Tensor:
        """The head's input from the CAM stage's activations.

        Args:
            feats: shape (B, C, x, y, z), as returned by ``features``.
        Returns:
            The pooled vector, shape (B, C').
        """
        ...


@runtime_checkable
class GradCamBackbone(Backbone, Protocol):
    """A backbone that computes its own Grad-CAM map."""

    def gradcam(self, feats: torch.Tensor, class_idx: int) -> torch.Tensor:
        """Grad-CAM of one output.

        Args:
            feats: shape (B, C, x, y, z), as returned by ``features``.
            class_idx: the output whose score is explained.
        Returns:
            Non-negative maps on the feature grid, shape (B, x, y, z).
        """
        ...


@runtime_checkable
class PretrainedLoader(Protocol):
    """A model that reads its own kind of pretrained weights file."""

    def load_pretrained_file(self, path: str | os.PathLike) -> LoadReport:
        """Initialise the backbone from ``path``.

        Args:
            path: a weights file (``.pth`` or ``.safetensors``).
        Returns:
            What was loaded, skipped and missing.
        """
        ...
