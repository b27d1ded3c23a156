"""Trained models for inference, on one CPU or any one device: `load_trained` (a run or a step
folder), `load_hf` (a Hugging Face directory), `load_run` (a run ready for evaluation); what they
return takes and gives strings (train/inference/text_api.py)."""

from train.inference.load import LoadedRun, Trained, load_hf, load_run, load_trained

__all__ = ["LoadedRun", "Trained", "load_hf", "load_run", "load_trained"]
