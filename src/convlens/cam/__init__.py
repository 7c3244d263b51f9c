"""Class activation maps: CAM and the Grad-CAM family, on custom and pretrained models.

``with GradCAM(model, layer) as cam: result = cam(images, targets)``; ``result.raw`` (layer resolution, after
the method's ReLU) and ``result.maps`` (input resolution, 0..1). See docs/cam.md.
"""

from convlens.cam.base import BaseCAM, CAMResult, LayerData, fuse_maps, min_max_per_image, upsample
from convlens.cam.methods import (
    CAM,
    METHODS,
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
    cam_method,
    explain,
    find_cam_head,
)

__all__ = [
    "CAM",
    "METHODS",
    "AblationCAM",
    "BaseCAM",
    "CAMResult",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "LayerCAM",
    "LayerData",
    "ScoreCAM",
    "XGradCAM",
    "cam_method",
    "explain",
    "find_cam_head",
    "fuse_maps",
    "min_max_per_image",
    "upsample",
]
