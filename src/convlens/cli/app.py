"""The typer application that every command module registers on."""

import typer

app = typer.Typer(
    name="convlens",
    help="See inside image CNNs: filters, feature maps, deconvnet, occlusion, CAMs. "
         "MODEL is efficientnet_lite0 (default, offline ImageNet weights), torchvision:NAME, timm:NAME, "
         "baseline, or a convlens checkpoint / training run folder.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
