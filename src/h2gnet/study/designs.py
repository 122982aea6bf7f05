"""The designs of the paper's ablation (section 3.2) and its published Table 1: data, no pipeline code."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Design:
    """One design: its ``key`` (config and folder name), the paper's ``label``, its ``kind`` ("otsu", "lowres",
    "patchwise" or "refined"), the stage-1 ``model`` of a patch-wise design ("mob", "inc", "mob-km") and the
    refiner ``arch`` of a low-resolution or refined one."""

    key: str
    label: str
    kind: str
    model: str | None = None
    arch: str | None = None


#: Design key -> design, in the paper's order.
DESIGNS: dict[str, Design] = {d.key: d for d in (
    Design("otsu", "(I) Otsu", "otsu"),
    Design("unet-lr", "(II) UNet-LR", "lowres", arch="unet-lr"),
    Design("inc-pw", "(III) Inc-PW", "patchwise", model="inc"),
    Design("mob-pw", "(IV) Mob-PW", "patchwise", model="mob"),
    Design("mob-km-pw", "(V) Mob-KM-PW", "patchwise", model="mob-km"),
    Design("mob-pw-unet", "(VI) Mob-PW-UNet", "refined", arch="unet"),
    Design("mob-pw-agunet", "(VII) Mob-PW-AGUNet", "refined", arch="agunet"),
    Design("mob-pw-dagunet", "(VIII) Mob-PW-DAGUNet", "refined", arch="dagunet"),
    Design("mob-pw-doubleunet", "(IX) Mob-PW-DoubleUNet", "refined", arch="doubleunet"),
)}
#: The paper's Table 1 (BCS-1 cohort, 90 test WSIs): recall, precision, Dice (mean, std).
PAPER_TABLE1 = {
    "otsu": ((0.990, 0.027), (0.534, 0.200), (0.669, 0.179)),
    "unet-lr": ((0.931, 0.113), (0.851, 0.165), (0.874, 0.128)),
    "inc-pw": ((0.881, 0.118), (0.909, 0.099), (0.887, 0.089)),
    "mob-pw": ((0.879, 0.123), (0.907, 0.100), (0.885, 0.094)),
    "mob-km-pw": ((0.853, 0.124), (0.909, 0.097), (0.872, 0.092)),
    "mob-pw-unet": ((0.944, 0.074), (0.929, 0.088), (0.933, 0.069)),
    "mob-pw-agunet": ((0.954, 0.066), (0.909, 0.097), (0.927, 0.072)),
    "mob-pw-dagunet": ((0.942, 0.075), (0.922, 0.091), (0.928, 0.072)),
    "mob-pw-doubleunet": ((0.949, 0.073), (0.919, 0.093), (0.929, 0.074)),
}
