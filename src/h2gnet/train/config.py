"""Settings of the training commands, checked when made (one home per parameter; no PyTorch here, so the
command line can build its options and check values without importing it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from h2gnet.params import ParameterError, Rule, check_fields, param
from h2gnet.patches.sampling import DEFAULT_STAGES

#: Patch-classifier architectures (section 2.4).
CLASSIFIER_ARCHS = ("mobilenetv2", "inceptionv3")
#: Refinement-network architectures (section 2.5).
REFINER_ARCHS = ("unet", "agunet", "dagunet", "doubleunet", "unet-lr")

#: Smallest classifier input side (px): InceptionV3's stem needs 75, MobileNetV2 32.
MIN_INPUT = {"mobilenetv2": 32, "inceptionv3": 75}
#: Default learning rates (Adam) from scratch; with ``--init`` (fine-tuning) :data:`FINETUNE_LR_FACTOR` times them.
PATCH_LR = 1e-4
REFINE_LR = 1e-3
FINETUNE_LR_FACTOR = 0.1
#: The refiner's input side without ``--init`` (the paper's 1024 px).
REFINE_INPUT_SIZE = 1024

INIT_HELP = ("start from a trained model: an h2gnet run folder or .onnx file, a foreign .onnx with its "
             "NAME.card.json beside it (or --preset), or a fetched preset's name (h2gnet-2022); its conventions "
             "(input size, µm/px, scaling, layout, class order) are kept in the exported model")
PRESET_HELP = "model-card preset for an --init model without a card beside it (e.g. h2gnet-2022)"


def _lr_rule(default: float) -> Rule:
    return Rule(float, low=0, high=1, low_open=True, optional=True,
                help=f"Adam learning rate (default {default:g}; {default * FINETUNE_LR_FACTOR:g} with --init)")


def _freeze_rule() -> Rule:
    return Rule(int, low=0, help="with --init: train only the head (classifier) or the decoder (refiner) for "
                                 "the first N optimizer steps, then every layer")


def _resolve_lr(cfg: PatchTrainConfig | RefineTrainConfig, default: float) -> None:
    if cfg.lr is None:
        cfg.lr = default * (FINETUNE_LR_FACTOR if cfg.init else 1.0)


def describe_lr(cfg: PatchTrainConfig | RefineTrainConfig) -> str:
    """The learning rate for the plan line, saying when it is the fine-tuning default."""
    default = PATCH_LR if isinstance(cfg, PatchTrainConfig) else REFINE_LR
    if cfg.init and math.isclose(cfg.lr, default * FINETUNE_LR_FACTOR):
        return f"lr {cfg.lr:g} (the --init default: a tenth of {default:g})"
    return f"lr {cfg.lr:g}"


@dataclass
class PatchTrainConfig:
    """Settings of a patch-classifier run (defaults: the paper's section 3.4); checked when made."""

    manifest: str
    index_dir: str
    arch: str = param("mobilenetv2", Rule(str, choices=CLASSIFIER_ARCHS))
    weights: str | None = None
    n_classes: int = param(2, Rule(int, low=2, high=1000, help="output classes"))
    epochs: int = param(100, Rule(int, low=1, help="training epochs"))
    steps: int = param(500, Rule(int, low=1, help="training batches per epoch"))
    val_steps: int = param(200, Rule(int, low=1, help="validation batches per epoch"))
    batch_size: int = param(64, Rule(int, low=1, high=4096, help="patches per batch"))
    lr: float = param(None, _lr_rule(PATCH_LR))  # None: the default, resolved in __post_init__
    input_size: int | None = param(None, Rule(int, low=32, high=2048, optional=True,
                                              help="model input side in px (default: the index's patch size, or "
                                                   "the --init model's; smaller reads the same field of view at "
                                                   "a coarser µm/px)"))
    total_steps: int | None = param(None, Rule(int, low=1, optional=True,
                                               help="run length in optimizer steps (replaces --epochs: epochs = "
                                                    "steps / --steps, rounded up)"))
    clusters: str | None = None
    stages: tuple[str, ...] = DEFAULT_STAGES
    augment: bool = param(True, Rule(bool))
    blur_um: float = param(0.0, Rule(float, low=0.0, high=20.0, unit="µm",
                                     help="Gaussian blur augmentation, for slides whose focus differs from the "
                                          "training slides': half of the patches blurred with a standard "
                                          "deviation uniform in [0, BLUR_UM] µm; 0: off, the paper's "
                                          "augmentations"))
    workers: int = param(2, Rule(int, low=0, high=256, help="DataLoader worker processes reading patches"))
    seed: int = param(0, Rule(int, low=0, help="random seed"))
    threads: int | None = param(None, Rule(int, low=1, high=1024, optional=True, help="PyTorch threads"))
    eval_per_class: int | None = param(200, Rule(int, low=1, optional=True,
                                                 help="test patches per class in the final evaluation"))
    progress: bool = param(True, Rule(bool))
    init: str | None = None
    preset: str | None = None
    freeze_backbone_steps: int = param(0, _freeze_rule())

    def __post_init__(self) -> None:
        check_fields(self)
        _resolve_lr(self, PATCH_LR)
        self.stages = tuple(self.stages)
        if self.blur_um > 0 and not self.augment:
            raise ParameterError("blur_um", "blur is an augmentation: it cannot be combined with --no-augment")
        if self.input_size is not None and self.input_size < MIN_INPUT[self.arch]:
            raise ParameterError("input_size", f"{self.arch} needs an input of at least {MIN_INPUT[self.arch]} px "
                                               f"(got {self.input_size})")


#: Learning-rate schedules of the refiner (see :func:`h2gnet.train.refiner.lr_at`).
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class RefineTrainConfig:
    """Settings of a refinement run (defaults: the paper's section 3.4); checked when made."""

    manifest: str
    heatmaps: str | None
    arch: str = param("unet", Rule(str, choices=REFINER_ARCHS))
    input_size: int | None = param(None, Rule(int, low=32, high=8192, optional=True,
                                              help=f"network input side in px (default: {REFINE_INPUT_SIZE} as "
                                                   "the paper, or the --init model's)"))
    epochs: int = param(1000, Rule(int, low=1, help="at most this many epochs"))
    total_steps: int | None = param(None, Rule(int, low=1, optional=True,
                                               help="run length in optimizer steps (replaces --epochs: epochs = "
                                                    "steps / optimizer steps per epoch, rounded up)"))
    patience: int = param(100, Rule(int, low=1, help="early-stopping patience in epochs"))
    batch_size: int = param(4, Rule(int, low=1, high=1024, help="slides per batch"))
    accumulation: int = param(6, Rule(int, low=1, high=1024, help="gradient-accumulation steps"))
    lr: float = param(None, _lr_rule(REFINE_LR))  # None: the default, resolved in __post_init__
    lr_schedule: str = param("constant", Rule(str, choices=LR_SCHEDULES,
                                              help="learning rate over the planned epochs: constant (the paper) or "
                                                   "cosine (decays to 0 by the last epoch)"))
    augment: bool = param(True, Rule(bool))
    filters: tuple[int, ...] | None = None
    seed: int = param(0, Rule(int, low=0, help="random seed"))
    threads: int | None = param(None, Rule(int, low=1, high=1024, optional=True, help="PyTorch threads"))
    progress: bool = param(True, Rule(bool))
    init: str | None = None
    preset: str | None = None
    freeze_backbone_steps: int = param(0, _freeze_rule())

    def __post_init__(self) -> None:
        check_fields(self)
        _resolve_lr(self, REFINE_LR)
        if self.input_size is None and self.init is None:
            self.input_size = REFINE_INPUT_SIZE
        if self.filters is not None:
            if not isinstance(self.filters, (list, tuple)) or not self.filters or not all(
                    isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in self.filters):
                raise ParameterError("filters", f"must be a list of positive integers (got {self.filters!r})")
            self.filters = tuple(self.filters)


@dataclass
class ClusterConfig:
    """Settings of the k-means clustering (defaults: the paper's 100 batches of 32, k = 10, 95 % variance)."""

    manifest: str
    index_dir: str
    k: int = param(10, Rule(int, low=2, high=1000, help="k-means clusters"))
    batches: int = param(100, Rule(int, low=1, help="batches of patches to fit on"))
    batch_size: int = param(32, Rule(int, low=1, high=4096, help="patches per batch"))
    variance: float = param(0.95, Rule(float, low=0, high=1, low_open=True,
                                       help="share of the feature variance the PCA keeps"))
    input_size: int | None = param(None, Rule(int, low=32, high=2048, optional=True,
                                              help="VGG16 input side in px (default: patch size)"))
    weights: str | None = None
    workers: int = param(2, Rule(int, low=0, high=256, help="DataLoader worker processes reading patches"))
    seed: int = param(0, Rule(int, low=0, help="random seed"))
    progress: bool = param(True, Rule(bool))

    def __post_init__(self) -> None:
        check_fields(self)
