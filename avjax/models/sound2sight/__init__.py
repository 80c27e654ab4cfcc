"""Sound2Sight (Chatterjee & Cherian, ECCV 2020): sound-conditioned stochastic video prediction."""
