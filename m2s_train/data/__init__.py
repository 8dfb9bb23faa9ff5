"""Stereo datasets for pre-training and fine-tuning."""
