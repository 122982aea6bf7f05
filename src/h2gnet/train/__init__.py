"""Training (the ``[train]`` extra): networks, losses, augmentation, the torch dataset, k-means cluster guiding,
the two trainers and ONNX export. The only package that imports PyTorch."""
