"""MCAV (Xu, Hu, Lee, BMVC 2023): motion estimation by optical flow with an audio motion
memory (`motion`), context-aware refinement (`refine`), whole clips and rollout (`model`)."""
