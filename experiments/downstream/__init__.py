"""Evaluations of trained models beyond their own loss: scoring, probes, fine-tuning."""
