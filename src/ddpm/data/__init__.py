"""Training data: image and 2-D point datasets, and the Lightning DataModules that batch them."""
