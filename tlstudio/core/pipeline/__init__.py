"""Feeding images to a model fast: loaders, augmentation, decoded and feature caches."""
