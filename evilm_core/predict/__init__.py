"""`evilm predict`: a trained checkpoint answers for videos of your own (docs/predict.md)."""
