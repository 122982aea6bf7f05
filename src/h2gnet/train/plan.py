"""How long a training run is, in optimizer steps: samples, batches and steps per epoch and in all.

Both trainers state their plan at start and warn when it has fewer than :data:`MIN_OPTIMIZER_STEPS`
optimizer steps. The threshold comes from the runs we have: a refiner given ~40 optimizer steps (10 slides,
batch 4 × accumulation 6, 40 epochs: issue 17) did not learn (validation Dice ~0.1, test Dice 0.33 against
0.65 patch-wise); the CPU ablation's patch classifier was still at chance (validation balanced accuracy 0.50)
after 40 and after 60 steps and reached 0.83 after 80 and 0.91 after 120 (``demo.toml``, 40 steps per
epoch); the ablation's refiner, which beats patch-wise, gets ~490 (27 slides, batch 4, 70 epochs).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

#: Fewer optimizer steps than this in a whole run: warn that the model will hardly learn (see the module doc).
MIN_OPTIMIZER_STEPS = 100
#: The same for a run fine-tuning a trained model (``--init``): 80 classifier steps and 100 refiner steps on 5
#: slides of a new stain set lifted refined Dice from 0.887 (zero-shot) to 0.897 (benchmarks/finetune_slides.py,
#: docs/guide/fine-tune.md); shorter runs are not measured.
MIN_FINETUNE_STEPS = 80


@dataclass(frozen=True)
class TrainingPlan:
    """One run's length: ``samples`` seen per epoch (all processes together), ``batches`` per epoch and
    process, optimizer ``steps`` per epoch (a partial accumulation at an epoch's end counts as a step),
    ``epochs`` planned and ``total_steps`` over the run."""

    samples: int
    batch_size: int
    accumulation: int
    world_size: int
    batches: int
    steps: int
    epochs: int
    total_steps: int

    def describe(self, unit: str = "samples") -> str:
        """One line for people, e.g. ``10 slides/epoch = 3 batches of 4 = 1 optimizer step (accumulation 6)``."""
        ws = f" × {self.world_size} processes" if self.world_size > 1 else ""
        acc = f", accumulation {self.accumulation}" if self.accumulation > 1 else ""
        return (f"plan: {self.samples} {unit}/epoch = {self.batches} batches of {self.batch_size}{ws}{acc} "
                f"= {self.steps} optimizer step{'s' if self.steps != 1 else ''}/epoch; "
                f"{self.epochs} epochs = {self.total_steps} optimizer steps")

    def as_dict(self) -> dict:
        """The plan's numbers (for ``metrics.json``)."""
        return asdict(self)

    def warn_if_short(self, advice: str, minimum: int = MIN_OPTIMIZER_STEPS) -> bool:
        """Warn (``UserWarning``) if the run has fewer than ``minimum`` optimizer steps; ``advice`` says what
        to change. True if it warned."""
        if self.total_steps >= minimum:
            return False
        warnings.warn(f"only {self.total_steps} optimizer steps in the whole run ({self.steps}/epoch × "
                      f"{self.epochs} epochs); fewer than {minimum} hardly train a model: {advice}",
                      UserWarning, stacklevel=3)
        return True


def plan_run(samples: int, batch_size: int, epochs: int, accumulation: int = 1,
             world_size: int = 1) -> TrainingPlan:
    """The plan of a run seeing ``samples`` per epoch (split over ``world_size`` processes) in batches of
    ``batch_size``, one optimizer step per ``accumulation`` batches."""
    per_process = math.ceil(samples / world_size)
    batches = math.ceil(per_process / batch_size)
    steps = math.ceil(batches / accumulation)
    return TrainingPlan(samples, batch_size, accumulation, world_size, batches, steps, epochs, steps * epochs)


def epochs_for(total_steps: int, steps_per_epoch: int) -> int:
    """Epochs needed for ``total_steps`` optimizer steps at ``steps_per_epoch`` (at least 1)."""
    return max(1, math.ceil(total_steps / max(steps_per_epoch, 1)))
