"""Scoring samples: Inception features, FID/KID/IS, reference statistics, distances between point sets."""
