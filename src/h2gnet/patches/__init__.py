"""From slide to patches: tissue detection, the 256-px patch grid at 10x and its index, hierarchical sampling.

No PyTorch here; the torch dataset that wraps the sampler lives in ``h2gnet.train.dataset``."""
