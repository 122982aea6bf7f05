"""Training (the ``[train]`` extra): networks, losses, augmentation, the torch dataset, k-means cluster guiding,
the two trainers, ONNX export and the start of a fine-tuning run (``finetune``). The only package that imports
PyTorch."""
