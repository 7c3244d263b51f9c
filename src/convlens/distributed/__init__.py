"""Dataset-scale jobs on Ray (the optional extra ``convlens[ray]``); in-process stays the default.

- ``RayOptions`` / ``connect``: ``local`` (start Ray here), ``auto`` or a cluster address;
- ``run_job``: the generic runner (Ray Data ``map_batches`` over the file list, one model per actor, Parquet
  shards written as they finish, ``resume``); ``transfer``: how a model reaches the actors;
- adapters: ``cam_on_ray`` (folder CAM), ``occlusion_on_ray`` (folder occlusion), ``topk_on_ray`` (exact
  top-k mining), ``faithfulness_on_ray`` (per-image metric scores, the table on the driver);
  ``read_shards(out)`` reads every image's row back.

Nothing here imports Ray until a job runs; without Ray, a job fails with one line naming the extra.
"""

from convlens.distributed.cam import CAMJob, cam_on_ray
from convlens.distributed.cluster import INSTALL_HINT, RayOptions, connect, import_ray
from convlens.distributed.faithfulness import FaithfulnessJob, faithfulness_on_ray
from convlens.distributed.occlusion import OcclusionJob, occlusion_on_ray
from convlens.distributed.result import OnRay
from convlens.distributed.runner import ModelWorker, RunRecord, run_job, run_shards
from convlens.distributed.shards import ShardPlan, ShardStore, read_shards
from convlens.distributed.topk import TopKJob, topk_on_ray
from convlens.distributed.transfer import ModelPackage, package_model

__all__ = [
    "INSTALL_HINT",
    "CAMJob",
    "FaithfulnessJob",
    "ModelPackage",
    "ModelWorker",
    "OcclusionJob",
    "OnRay",
    "RayOptions",
    "RunRecord",
    "ShardPlan",
    "ShardStore",
    "TopKJob",
    "cam_on_ray",
    "connect",
    "faithfulness_on_ray",
    "import_ray",
    "occlusion_on_ray",
    "package_model",
    "read_shards",
    "run_job",
    "run_shards",
    "topk_on_ray",
]
