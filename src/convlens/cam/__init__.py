"""Class activation maps: CAM and the Grad-CAM family, on custom and pretrained models.

``convlens.cam(model, images, method="gradcam")`` returns a ``CAMResult`` (``arrays()``, ``summary()``,
``figures()``, ``save(out)``); ``method=[...]`` a ``CAMComparison``. The classes are the same methods for
repeated use: ``GradCAM(model, layer)(images, targets)``. ``METHODS`` maps CLI names to classes; a new method is
one subclass of ``BaseCAM`` decorated with ``@register``. See docs/cam.md.
"""

from convlens._callable import callable_package
from convlens.cam.base import (
    METHODS,
    BaseCAM,
    CAMWarning,
    LayerData,
    fuse_maps,
    min_max_per_image,
    register,
    upsample,
)
from convlens.cam.methods import (
    CAM,
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
from convlens.cam.more_methods import (
    ISCAM,
    KPCACAM,
    SSCAM,
    EigenGradCAM,
    FinerCAM,
    FullGrad,
    GradCAMElementWise,
    HiResCAM,
    ShapleyCAM,
    SmoothGradCAMPlusPlus,
)
from convlens.cam.result import CAMComparison, CAMResult, ImageInfo
from convlens.cam.run import cam

__all__ = [
    "EigenGradCAM",
    "FinerCAM",
    "FullGrad",
    "GradCAMElementWise",
    "HiResCAM",
    "ISCAM",
    "KPCACAM",
    "SSCAM",
    "ShapleyCAM",
    "SmoothGradCAMPlusPlus",

    "CAM",
    "METHODS",
    "AblationCAM",
    "BaseCAM",
    "CAMComparison",
    "CAMResult",
    "CAMWarning",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "ImageInfo",
    "LayerCAM",
    "LayerData",
    "ScoreCAM",
    "XGradCAM",
    "cam",
    "cam_method",
    "explain",
    "find_cam_head",
    "fuse_maps",
    "min_max_per_image",
    "register",
    "upsample",
]

callable_package(__name__, "cam")
