"""``convlens train`` and ``convlens data check``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from convlens.cli.app import app
from convlens.cli.common import BatchSizeOpt, DeviceOpt, ForceOpt, WorkersOpt, console, done, in_range, track
from convlens.errors import ConvlensError

data_app = typer.Typer(help="Inspect image folders before training.", no_args_is_help=True)
app.add_typer(data_app, name="data")

EXAMPLE_PAIRS = 8
IMG_SIZES = (8, 1024)
EPOCHS = (1, 100_000)
UNFREEZE = (0, 100_000)
NearDistanceOpt = Annotated[int, in_range("--near-distance", "Near-duplicate threshold in bits (of 64, pHash "
                                          "and dHash).", 0, 64)]


class ConsoleEvents:
    """Rich progress for a run: one bar per epoch with the running loss and accuracy, one line per epoch."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.task = None

    def track(self, items, total, description):
        return track(items, total=total, description=description)

    def warning(self, message: str) -> None:
        style = "bold red" if message.startswith("LEAK") else "bold yellow"
        console.print(f"[{style}]warning:[/{style}] {message}", soft_wrap=True)

    def fold_started(self, fold: int, folds: int, train_size: int, validation_size: int) -> None:
        console.rule(f"fold {fold} of {folds}: train {train_size}, validation {validation_size} images")

    def epoch_started(self, epoch: int, epochs: int, batches: int, phase: str) -> None:
        self.close()
        label = f"epoch {epoch}/{epochs}" + (" (head only)" if phase == "frozen" else "")
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}  acc {task.fields[accuracy]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task(label, total=batches, loss="-", accuracy="-")

    def batch_progress(self, batches_done: int, loss: float, accuracy: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=batches_done, loss=f"{loss:.4f}",
                                 accuracy=f"{100 * accuracy:.1f}%")

    def epoch_done(self, record, is_best: bool) -> None:
        self.close()
        mark = "  [green]best[/green]" if is_best else ""
        console.print(f"epoch {record.epoch:>3}  train loss {record.train_loss:.4f} "
                      f"acc {100 * record.train_accuracy:5.1f}%  validation loss {record.val_loss:.4f} "
                      f"acc {100 * record.val_accuracy:5.1f}%  {record.seconds:.1f} s{mark}", soft_wrap=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


@app.command("train")
def train_command(
    data_dir: Annotated[Path | None, typer.Argument(metavar="DATA_DIR", help="Image folder: CLASS/ subfolders, "
                                                    "or train/ and validation/ (or val/) with CLASS/ inside.")] = None,
    arch: Annotated[str, typer.Option("--arch", help="baseline, efficientnet_lite0, torchvision:NAME or timm:NAME."
                                      )] = "baseline",
    out: Annotated[Path | None, typer.Option("--out", help="Run folder (a model spec for every command).")] = None,
    weights: Annotated[str | None, typer.Option("--weights", help="Starting weights, as load_model takes them "
                                                "(a local state_dict file, a torchvision weights name).")] = None,
    img_size: Annotated[int | None, in_range("--img-size", "Input side in px (baseline default 32; pretrained "
                                             "models default to their own).", *IMG_SIZES)] = None,
    epochs: Annotated[int | None, in_range("--epochs", "Epochs in all (default 10; with --resume, the run's "
                                           "own).", *EPOCHS)] = None,
    batch_size: BatchSizeOpt = 32,
    lr: Annotated[float | None, in_range("--lr", "Learning rate (default 0.01 SGD, 0.001 Adam).", 0, 10,
                                         low_open=True)] = None,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd or adam.")] = "sgd",
    momentum: Annotated[float, in_range("--momentum", "SGD momentum (0 is Keras's plain SGD).", 0, 1,
                                        high_open=True)] = 0.9,
    weight_decay: Annotated[float, in_range("--weight-decay", "L2 penalty.", 0, 1)] = 0.0,
    seed: Annotated[int, in_range("--seed", "Seeds the split, the new weights, shuffling, augmentation.", 0,
                                  2**32 - 1)] = 0,
    device: DeviceOpt = "auto",
    val_split: Annotated[float, in_range("--val-split", "Validation share when DATA_DIR has no split of its "
                                         "own.", 0, 1, low_open=True, high_open=True)] = 0.2,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random shear 0.1, zoom 0.1, "
                                          "horizontal flip (the leaf study's Keras augmentation).")] = False,
    freeze_backbone: Annotated[bool, typer.Option("--freeze-backbone", help="Train only the new head.")] = False,
    unfreeze_after: Annotated[int | None, in_range("--unfreeze-after", "With --freeze-backbone: train everything "
                                                   "after this many epochs.", *UNFREEZE)] = None,
    finetune_lr: Annotated[float | None, in_range("--finetune-lr", "Learning rate once unfrozen (default --lr / "
                                                  "10).", 0, 10, low_open=True)] = None,
    snapshots: Annotated[str | None, typer.Option("--snapshots", help="Keep the weights at these epochs, e.g. "
                                                  "0,1,2,5,10 (0: the starting weights).")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue this run folder (its settings, "
                                                "split and optimizer state; --epochs to go further).")] = None,
    dedupe: Annotated[bool, typer.Option("--dedupe", help="Drop validation images that duplicate training "
                                         "ones and repeated copies (a made split becomes group-aware).")] = False,
    cv: Annotated[int | None, in_range("--cv", "K-fold cross-validation (stratified, duplicates kept in one "
                                       "fold) over all images; runs go to OUT/fold_N.", 2, 100)] = None,
    split: Annotated[Path | None, typer.Option("--split", help="Reuse a split.json (or the run folder holding "
                                               "it).")] = None,
    workers: WorkersOpt = 0,
    near_distance: NearDistanceOpt = 12,
    force: Annotated[bool, typer.Option("--force", help="Replace --out even when it holds an earlier run or "
                                                        "files convlens did not write.")] = False,
) -> None:
    """Train the baseline CNN or fine-tune a pretrained model on an image folder; checks the data first."""
    from convlens.training import TrainConfig, cross_validate, parse_snapshots, train
    from convlens.training import resume as resume_run

    events = ConsoleEvents()
    try:
        if resume is not None:
            if (resume / "last.safetensors").is_file():
                console.print(f"resuming {resume}")
            result = resume_run(resume, epochs=epochs, device=None if device == "auto" else device,
                                data_dir=data_dir, events=events)
            _report_run(result)
            return
        if data_dir is None or out is None:
            raise ConvlensError("give DATA_DIR and --out RUN_DIR (or --resume RUN_DIR)")
        config = TrainConfig(arch=arch, weights=weights, img_size=img_size, epochs=epochs or 10,
                             batch_size=batch_size, lr=lr, optimizer=optimizer.lower(), momentum=momentum,
                             weight_decay=weight_decay, seed=seed, device=device, val_split=val_split,
                             augment=augment, freeze_backbone=freeze_backbone, unfreeze_after=unfreeze_after,
                             finetune_lr=finetune_lr, snapshots=parse_snapshots(snapshots), dedupe=dedupe,
                             workers=workers, near_distance=near_distance)
        if cv is not None:
            if split is not None:
                raise ConvlensError("--cv makes its own folds; leave out --split")
            _report_cv(cross_validate(data_dir, out, cv, config, events, force=force))
        else:
            _report_run(train(data_dir, out, config, split_file=split, events=events, force=force))
    except KeyboardInterrupt:
        events.close()
        target = resume or out
        if target is not None and (Path(target) / "last.safetensors").is_file():
            console.print(f"the finished epochs are in {target}: continue with convlens train --resume {target}")
        raise
    finally:
        events.close()


def _report_run(result) -> None:
    best, final = result.best, result.final
    console.print(f"best validation accuracy {100 * best.val_accuracy:.2f}% at epoch {best.epoch}; final epoch "
                  f"{final.epoch}: train {100 * final.train_accuracy:.2f}%, validation "
                  f"{100 * final.val_accuracy:.2f}% ({result.train_size} train, {result.validation_size} "
                  f"validation images, {result.wall_seconds:.0f} s)")
    done(result.run_dir)


def _report_cv(result) -> None:
    table = Table("fold", "train", "validation", "final val acc", "best val acc (epoch)", "seconds",
                  title=f"{len(result.folds)}-fold cross-validation")
    for number, fold in enumerate(result.folds, start=1):
        table.add_row(str(number), str(fold.train_size), str(fold.validation_size),
                      f"{100 * fold.final.val_accuracy:.2f}%",
                      f"{100 * fold.best.val_accuracy:.2f}% ({fold.best_epoch})", f"{fold.wall_seconds:.0f}")
    console.print(table)
    final, best = result.final_accuracies, result.best_accuracies
    console.print(f"validation accuracy after the last epoch: [bold]{100 * final.mean():.2f} ± "
                  f"{100 * final.std():.2f}%[/bold] (mean ± std over folds); at each fold's best epoch "
                  f"{100 * best.mean():.2f} ± {100 * best.std():.2f}% (optimistic: chosen on the fold itself)")
    done(result.out)


@data_app.command("check")
def data_check_command(
    data_dir: Annotated[Path, typer.Argument(metavar="DATA_DIR", help="Image folder (as for train).")],
    near_distance: NearDistanceOpt = 12,
    out: Annotated[Path | None, typer.Option("--out", help="Also write summary.json, arrays.npz and a figure "
                                             "of duplicate examples here (the report is printed; the folder is "
                                             "optional).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
    force: ForceOpt = False,
) -> None:
    """Class counts, image sizes, unreadable files, identical and near-duplicate images (inside a split and
    across train/validation), images filed under two classes."""
    from convlens.data.check import check_data
    from convlens.output import check_out

    if out is not None:
        check_out(out, force=force)  # before the check, which can take minutes

    report = check_data(data_dir, near_distance,
                        progress=lambda items, total: track(items, total=total, description="checking images"))
    record = report.to_dict()
    if as_json:
        print(json.dumps(record, indent=2))
    else:
        _print_report(report, record)
    if out is not None:
        _write_check(report, record, out, force)
        done(out)
    if report.problems():
        raise ConvlensError(f"{data_dir} cannot be trained on as it is: {report.problems()[0]}")


def _print_report(report, record: dict) -> None:
    splits = report.splits
    counts = report.class_counts()
    table = Table("class", *splits, title=f"{report.layout.root}: {record['images']} readable images, "
                                          f"{record['unique_images']} distinct")
    for name in report.class_names:
        table.add_row(name, *[str(counts[split].get(name, "-")) for split in splits])
    table.add_row("[bold]all[/bold]", *[f"[bold]{record['splits'][s]['images']}[/bold]" for s in splits])
    console.print(table)
    sizes = record["image_size"]
    if sizes:
        console.print(f"image size: width {sizes['width_min']}-{sizes['width_max']} px (median "
                      f"{sizes['width_median']:.0f}), height {sizes['height_min']}-{sizes['height_max']} px "
                      f"(median {sizes['height_median']:.0f})")
    if report.ignored:
        console.print(f"ignored {len(report.ignored)} non-image file(s), e.g. {report.ignored[0]}")
    for path, reason in report.corrupt:
        console.print(f"[yellow]unreadable:[/yellow] {path} ({reason})")
    for split in splits:
        entry = record["splits"][split]
        console.print(f"{split}: {entry['images']} images, {entry['unique_images']} distinct "
                      f"({entry['exact_duplicate_copies']} identical copies), "
                      f"{len(entry['near_duplicate_groups'])} groups of near duplicates")
    identical, near = record["validation_identical_to_train"], record["validation_near_duplicate_of_train"]
    if report.layout.given_split:
        total = record["splits"]["validation"]["images"]
        style = "bold red" if identical or near else "green"
        console.print(f"[{style}]validation vs train: {len(identical)} of {total} validation images are identical "
                      f"to training images, {len(near)} more are near duplicates[/{style}]")
        for pair in (identical + near)[:EXAMPLE_PAIRS]:
            console.print(f"  {pair[0]} = {pair[1]}")
    for group in record["label_conflicts"]:
        console.print(f"[bold yellow]filed under more than one class:[/bold yellow] {' = '.join(group)}")
    console.print(f"near duplicates (pHash and dHash within {record['near_distance_bits']} of 64 bits): "
                  f"{len(record['near_duplicate_groups'])} groups")
    for problem in record["problems"]:
        console.print(f"[bold red]problem:[/bold red] {problem}")


def _write_check(report, record: dict, out: Path, force: bool = False) -> None:
    """summary.json (the report), arrays.npz (hashes, sizes; ``input`` the example thumbnails shown) and
    duplicates.png (examples: validation images found in train, near duplicates, label conflicts)."""
    import numpy as np
    from PIL import ImageOps

    from convlens.data.images import load_image
    from convlens.output import output_dir
    from convlens.render import image_grid

    leaks = report.leaks()
    pairs = [(i, report.leak_partner(i), "identical") for i in leaks["exact"][:3]]
    pairs += [(i, report.leak_partner(i), "near") for i in leaks["near"][:2]]
    pairs += [(g[0], g[1], "near") for g in report.near_groups()[:3] if len(pairs) < EXAMPLE_PAIRS]
    pairs += [(g[0], g[1], "two classes") for g in report.label_conflicts(near=True)[:2]]
    thumbs, titles = [], []
    for first, second, kind in pairs[:EXAMPLE_PAIRS]:
        for index in (first, second):
            image = ImageOps.pad(load_image(report.images[index].path), (96, 96), color=(255, 255, 255))
            thumbs.append(np.asarray(image, dtype=np.float32) / 255.0)
            titles.append(f"{kind}: {report.display(index)}")
    with output_dir(out, "data check", force=force) as folder:
        with folder.timed():
            hashes = np.array([[info.phash, info.dhash] for info in report.images], dtype=np.uint64)
        if thumbs:
            folder.save_figure(image_grid(thumbs, titles, ncols=4, tile_inches=2.0,
                                          suptitle="duplicate examples (pairs side by side)"), "duplicates.png")
        folder.add_arrays(input=np.stack(thumbs) if thumbs else np.zeros((0, 96, 96, 3), np.float32),
                          hashes=hashes, sizes=np.array([[i.width, i.height] for i in report.images]))
        folder.update(inputs=[str(report.layout.root)], report=record)
