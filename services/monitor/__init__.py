"""Monitor: joins predictions with their labels, measures drift per model version
(rolling accuracy, ADWIN on errors, PSI per feature) and asks for retraining when
a policy confirms it."""
