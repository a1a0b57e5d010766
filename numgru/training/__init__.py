"""Training on top of the layers: losses, optimizers, scikit-learn style estimators."""
