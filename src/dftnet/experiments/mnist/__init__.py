"""The MNIST-family experiment (``dftnet train``, ``dftnet sweep``, ``dftnet eval``): data, models, recipe,
training and evaluation."""
