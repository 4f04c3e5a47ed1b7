"""Caption training data, evaluation datasets and the synthetic caption world."""
