"""Data: what the models are given — the synthetic captioning world, image folders, texts."""
