"""Training of the patch classifier (stage 1) and the refinement network (stage 2). Needs ``[train]``."""
