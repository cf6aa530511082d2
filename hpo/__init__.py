"""DeepHyper hyperparameter sweeps over stage configs. See issue 9."""
