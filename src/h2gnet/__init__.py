"""h2gnet: breast-cancer tumour region segmentation in H&E whole-slide images.

The package layout follows the pipeline:
slides -> tissue -> annotations -> patches -> sampling -> models -> training
-> heatmap -> refinement -> outputs -> evaluation.
"""

__version__ = "0.1.0"
